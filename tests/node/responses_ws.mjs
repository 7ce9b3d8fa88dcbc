// Drives the official `openai` npm package's Responses WebSocket mode (`ResponsesWS` from
// `openai/resources/responses/ws`, on the npm `ws` package) on this machine's Node.js for
// the e2e suite.
//
// stdin:  {"ops": [op, ...]}; every op runs at once (Promise.all), each with its own client
//         and its own socket.
//   op.id        echoed back
//   op.baseURL   the gateway, ".../v1" (the SDK turns it into ws://.../v1/responses)
//   op.apiKey    default "sk-test"
//   op.turns     [turn, ...]: sent on the one socket one at a time, each once the one before
//                has ended (a response.completed, response.failed or response.incomplete
//                event, or an error); the first is sent at once, so the SDK queues it until
//                the socket is open
//     turn.params  the response.create event's fields, "type" added; unknown keys (the
//                  fake's script) are sent as they are
//     turn.chain   true: previous_response_id is the id of the last response a turn
//                  before this one ended with
// stdout: {"results": [result, ...]} in op order, one JSON document.
//   result.ok        every turn was sent and ended, and the socket closed only when the
//                    driver closed it
//   result.opened    the socket opened
//   result.turns     [{events, text, error, response, pings}, ...], one for each turn sent:
//                    events: the parsed events the SDK handed the application, in order;
//                    text: their output_text deltas; response: the ending event's
//                    `response`; error: the SDK's WebSocketError as {class, message,
//                    event} (event: the error event as received, null for a socket error);
//                    pings: ping frames the socket answered while the turn ran
//   result.raw       messages the SDK could not parse (it hands them over as `raw`)
//   result.close     {code, reason} of the SDK's close event
//   result.failure   why ok is false, if it is
//
// The socket is closed by the driver (1000) after the last turn; no reconnect options are
// given, so the SDK does not reconnect.

import OpenAI from 'openai';
import { ResponsesWS } from 'openai/resources/responses/ws';

import { runOps } from './ops.mjs';

const ENDS = new Set(['response.completed', 'response.failed', 'response.incomplete']);

function describe(error) {
  return {
    class: error?.constructor?.name ?? typeof error,
    message: String(error?.message ?? error),
    event: error?.error ?? null,
  };
}

async function run(op) {
  const client = new OpenAI({ baseURL: op.baseURL, apiKey: op.apiKey ?? 'sk-test', maxRetries: 0 });
  const out = { id: op.id, ok: false, opened: false, turns: [], raw: [], close: null };
  const ws = new ResponsesWS(client);
  let pings = 0;
  ws.socket.platformSocket.on('ping', () => {
    pings += 1;
  });
  let lastResponse = null;
  let closing = false;

  const send = () => {
    const turn = op.turns[out.turns.length];
    const params = { type: 'response.create', ...turn.params };
    if (turn.chain) params.previous_response_id = lastResponse?.id;
    out.turns.push({ events: [], text: '', error: null, response: null, pings: 0 });
    pings = 0;
    ws.send(params);
  };
  const end = () => {
    const current = out.turns[out.turns.length - 1];
    current.pings = pings;
    if (current.response) lastResponse = current.response;
    if (out.turns.length < op.turns.length) {
      send();
    } else {
      closing = true;
      ws.close();
    }
  };

  send();
  for await (const message of ws) {
    const current = out.turns[out.turns.length - 1];
    if (message.type === 'open') {
      out.opened = true;
    } else if (message.type === 'message') {
      const event = message.message;
      current.events.push(event);
      if (event.type === 'response.output_text.delta') current.text += event.delta;
      if (ENDS.has(event.type)) {
        current.response = event.response;
        end();
      }
    } else if (message.type === 'error') {
      current.error = describe(message.error);
      if (!message.error.error) {
        out.failure = `socket error: ${message.error.message}`;
        break;
      }
      end();
    } else if (message.type === 'raw') {
      out.raw.push(String(message.data));
    } else if (message.type === 'close') {
      out.close = { code: message.code, reason: message.reason };
      if (!closing) out.failure = 'the socket closed before the driver closed it';
    }
  }
  out.ok = closing && !out.failure;
  return out;
}

await runOps(run);
