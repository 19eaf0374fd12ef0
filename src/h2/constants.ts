/**
 * The few `http2.constants` the proxy uses, as literals so that modules can be loaded without
 * loading `node:http2` (see builtins.ts). Values are fixed by RFC 9113 and nghttp2;
 * test/builtins.test.mjs checks them against `http2.constants`.
 */
export const NGHTTP2_FLAG_END_STREAM = 0x1;
export const NGHTTP2_REFUSED_STREAM = 7;
export const NGHTTP2_CANCEL = 8;
export const NGHTTP2_ENHANCE_YOUR_CALM = 11;
export const HTTP2_HEADER_STATUS = ':status';
export const HTTP2_HEADER_CONTENT_TYPE = 'content-type';
export const HTTP2_HEADER_CONTENT_LENGTH = 'content-length';
