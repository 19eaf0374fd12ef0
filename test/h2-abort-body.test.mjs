// Regression (soak): an HTTP/2 client that resets its stream — even with NO_ERROR — in the
// middle of a body without content-length must not make the upstream see a complete request.
// Node ends the stream's readable side on RST_STREAM, which looked like END_STREAM.
import { it } from 'node:test';
import assert from 'node:assert/strict';
import { startProxy, startUpstream, waitFor } from './helpers/servers.mjs';
import { H2RawClient, ERROR, headersFrame, dataFrame, rstStreamFrame, requestHeaders } from './helpers/h2-raw.mjs';

for (const [name, code] of [['NO_ERROR', ERROR.NO_ERROR], ['CANCEL', ERROR.CANCEL]]) {
  it(`RST_STREAM(${name}) mid-upload: the upstream sees an aborted request, never a complete one`, async () => {
    const outcomes = [];
    const up = await startUpstream((req, res) => {
      let n = 0;
      req.on('data', (c) => (n += c.length));
      req.on('end', () => {
        outcomes.push(`complete ${n}`);
        res.end();
      });
      req.on('aborted', () => outcomes.push(`aborted ${n}`));
      req.on('error', () => {});
    });
    const px = await startProxy();
    const c = await H2RawClient.connect(px.port);
    try {
      const headers = requestHeaders(up.port, { method: 'POST', path: '/upload' });
      c.send(headersFrame(1, headers));
      c.send(dataFrame(1, Buffer.alloc(1000, 97)));
      await waitFor(() => up.requests.length === 1);
      await new Promise((r) => setTimeout(r, 50));
      c.send(rstStreamFrame(1, code));
      assert.ok(await waitFor(() => outcomes.length > 0, { timeoutMs: 3000 }), 'the upstream learned the outcome');
      assert.deepEqual(outcomes.map((o) => o.split(' ')[0]), ['aborted']);
    } finally {
      c.close();
      await px.proxy.stop();
      await up.close();
    }
  });
}
