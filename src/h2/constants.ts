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

/**
 * The RFC 9113 §7 error code for an nghttp2 library error (`errno` of Node's ERR_HTTP2_ERROR),
 * for the GOAWAY of a session destroyed over it. nghttp2's own mapping
 * (get_error_code_from_lib_error_code) plus the errors nghttp2 reports without a GOAWAY of its own.
 */
export function rfcCodeForNghttp2Error(errno: number): number {
  switch (errno) {
    case -505: // NGHTTP2_ERR_PROTO
    case -531: // NGHTTP2_ERR_HTTP_HEADER
    case -532: // NGHTTP2_ERR_HTTP_MESSAGING
    case -536: // NGHTTP2_ERR_SETTINGS_EXPECTED: the first frame was not SETTINGS
    case -903: // NGHTTP2_ERR_BAD_CLIENT_MAGIC: invalid connection preface (RFC 9113 §3.4)
      return 0x1; // PROTOCOL_ERROR
    case -524: // NGHTTP2_ERR_FLOW_CONTROL
      return 0x3; // FLOW_CONTROL_ERROR
    case -510: // NGHTTP2_ERR_STREAM_CLOSED
      return 0x5; // STREAM_CLOSED
    case -522: // NGHTTP2_ERR_FRAME_SIZE_ERROR
      return 0x6; // FRAME_SIZE_ERROR
    case -533: // NGHTTP2_ERR_REFUSED_STREAM
      return 0x7; // REFUSED_STREAM
    case -523: // NGHTTP2_ERR_HEADER_COMP
      return 0x9; // COMPRESSION_ERROR
    case -537: // NGHTTP2_ERR_TOO_MANY_SETTINGS
    case -904: // NGHTTP2_ERR_FLOODED
    case -905: // NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
      return 0xb; // ENHANCE_YOUR_CALM
    default:
      return 0x2; // INTERNAL_ERROR
  }
}
