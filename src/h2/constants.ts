/**
 * The few `http2.constants` the proxy uses, as literals so that modules can be loaded without
 * loading `node:http2` (see builtins.ts). Values are fixed by RFC 9113 and nghttp2;
 * test/builtins.test.mjs checks them against `http2.constants`.
 */
export const NGHTTP2_FLAG_END_STREAM = 0x1;
export const NGHTTP2_NO_ERROR = 0;
export const NGHTTP2_REFUSED_STREAM = 7;
export const NGHTTP2_CANCEL = 8;
export const NGHTTP2_ENHANCE_YOUR_CALM = 11;
export const NGHTTP2_SETTINGS_TIMEOUT = 0x4;
export const HTTP2_HEADER_STATUS = ':status';
export const HTTP2_HEADER_CONTENT_TYPE = 'content-type';
export const HTTP2_HEADER_CONTENT_LENGTH = 'content-length';
export const NGHTTP2_PROTOCOL_ERROR = 0x1;
export const NGHTTP2_INTERNAL_ERROR = 0x2;
export const NGHTTP2_FLOW_CONTROL_ERROR = 0x3;
export const NGHTTP2_STREAM_CLOSED = 0x5;
export const NGHTTP2_FRAME_SIZE_ERROR = 0x6;
export const NGHTTP2_COMPRESSION_ERROR = 0x9;
export const NGHTTP2_HTTP_1_1_REQUIRED = 0xd;
