/** First-bytes classification of a connection: HTTP/1.x, the h2c preface, or a TLS ClientHello. */
export const H2_PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

export const SNIFF_MORE = 0; // a prefix of the h2 preface so far: read more
export const SNIFF_TLS = 1;
export const SNIFF_H2 = 2;
export const SNIFF_H1 = 3;

const TLS_HANDSHAKE = 0x16;

/** Decides from the bytes read so far. The preface may arrive split across reads. */
export function sniff(data: Buffer): number {
  if (data.length === 0) return SNIFF_MORE;
  if (data[0] === TLS_HANDSHAKE) return SNIFF_TLS;
  const n = Math.min(data.length, H2_PREFACE.length);
  if (data.compare(H2_PREFACE, 0, n, 0, n) !== 0) return SNIFF_H1;
  return n === H2_PREFACE.length ? SNIFF_H2 : SNIFF_MORE;
}
