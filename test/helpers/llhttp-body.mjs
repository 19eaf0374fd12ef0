// Watches the body bytes Node's llhttp binding hands to JavaScript: a getter on the parser
// prototype's kOnBody slot wraps the callback of the parsers a test picks (by their `conn`, the
// proxy's own session or upstream connection) and leaves every other parser's callback as it is.
import { createRequire } from 'node:module';

export const { HTTPParser } = createRequire(import.meta.url)('_http_common');

const kStored = Symbol('onBody');

/**
 * From now on, `onChunk(chunk)` sees each body chunk llhttp hands to a parser for which
 * `picks(parser)` is true, before the parser's own callback does. Returns the function that
 * takes the hook off again.
 */
export function watchOnBody(picks, onChunk) {
  function watchedOnBody(chunk) {
    onChunk(chunk);
    return this[kStored].call(this, chunk);
  }
  Object.defineProperty(HTTPParser.prototype, HTTPParser.kOnBody, {
    configurable: true,
    set(fn) {
      this[kStored] = fn;
    },
    get() {
      const fn = this[kStored];
      return typeof fn === 'function' && picks(this) ? watchedOnBody : fn;
    },
  });
  return () => delete HTTPParser.prototype[HTTPParser.kOnBody];
}
