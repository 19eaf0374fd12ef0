/**
 * node:http2 keeps some of a session's state under symbols of its own, which it does not
 * export. The proxy finds such a property by the shape of its value, on the session itself.
 */
export function symbolHolding(object: object, hasShape: (value: unknown) => boolean): symbol | null {
  const holder = object as Record<symbol, unknown>;
  for (const key of Object.getOwnPropertySymbols(object)) {
    if (hasShape(holder[key])) return key;
  }
  return null;
}
