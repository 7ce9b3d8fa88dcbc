// Drives the official `@anthropic-ai/sdk` npm package on this machine's Node.js for the e2e suite.
//
// stdin:  {"ops": [op, ...]}; every op runs at once (Promise.all), each with its own client.
//   op.id        echoed back
//   op.baseURL   gateway or fake upstream, the server root WITHOUT /v1 (the SDK appends
//                /v1/messages, /v1/models itself)
//   op.call      "create"       messages.create(params); params.stream true or false
//                "stream"       the messages.stream(params) helper, then finalMessage()
//                "count_tokens" messages.countTokens(params)
//                "models"       models.list(), every page
//   op.params    the call's body; unknown keys (the fake's script) are sent as they are
//   op.apiKey    default "sk-test"; this SDK sends it as `Authorization: Bearer`. null: no
//                key, for a key in op.headers alone (e.g. {"x-api-key": ...}, as Claude Code
//                sends it); the SDK then reads no key from the environment either
//   op.headers   extra default headers of the client, e.g. {"anthropic-beta": "..."}
//   op.undici    {headersTimeout, bodyTimeout} in ms: Node's fetch gets an Agent from the npm
//                `undici` package (the library Node's fetch is built on) with these timers
//                as its dispatcher; absent: Node's fetch as it comes (300 s each)
//   op.tap       also record the raw response text as fetch received it (pings included:
//                the SDK drops them before the application sees events)
// stdout: {"results": [result, ...]} in op order, one JSON document.
//   result.ok          the call and the whole iteration finished without an error
//   result.headers     the call's status and headers arrived (a stream was opened)
//   result.request_id  the `request-id` response header as the SDK exposes it, or null
//   result.events      a stream's events as the SDK parsed them and handed them to the
//                      application, in order (ping is never among them)
//   result.text        the text_delta pieces of a stream, or the text blocks of a message
//   result.result      "create" non-stream: the message; "stream": finalMessage();
//                      "count_tokens": {input_tokens}; "models": the list of models
//   result.raw         with op.tap: the bytes fetch received, as text
//   result.error       {class, status, type, message, body, chain: [{name, code, message}],
//                      undici, fetch}: `type` is the Anthropic error type (body.error.type);
//                      `undici` is the first UND_ERR_* code in the error's cause chain or in
//                      that of the failed fetch (`fetch`) the SDK was handed
//   result.elapsed_ms  from the call to its end or its error
//
// The SDK's retries are off (maxRetries 0) so an error shows the first failure as it is.

import { Agent } from 'undici';
import Anthropic from '@anthropic-ai/sdk';

import { runOps } from './ops.mjs';

// Node's own fetch, watched: the SDK turns a fetch that fails with a timeout into its own
// APIConnectionTimeoutError and drops the cause, so the cause is kept here. With `tap`, the
// body is teed and one branch recorded; the SDK reads the other branch.
function watchedFetch(sink, tap) {
  return async (url, init) => {
    let res;
    try {
      res = await fetch(url, init);
    } catch (error) {
      sink.fetchError = error;
      throw error;
    }
    if (!tap || !res.body) return res;
    const [forSdk, forTap] = res.body.tee();
    const decoder = new TextDecoder();
    sink.done = (async () => {
      const reader = forTap.getReader();
      for (;;) {
        let step;
        try {
          step = await reader.read();
        } catch {
          return;
        }
        if (step.done) return;
        sink.raw += decoder.decode(step.value, { stream: true });
      }
    })();
    return new Response(forSdk, { status: res.status, statusText: res.statusText, headers: res.headers });
  };
}

function describe(error) {
  const chain = [];
  for (let e = error; e && chain.length < 8; e = e.cause) {
    chain.push({ name: e.constructor?.name ?? typeof e, code: e.code ?? null, message: String(e.message ?? e) });
  }
  const undici = chain.find((c) => typeof c.code === 'string' && c.code.startsWith('UND_ERR'));
  const body = error?.error ?? null;
  return {
    class: error?.constructor?.name ?? typeof error,
    status: error?.status ?? null,
    type: body?.error?.type ?? null,
    message: String(error?.message ?? error),
    body,
    chain,
    undici: undici ? undici.code : null,
  };
}

function textOf(message) {
  return (message?.content ?? []).filter((b) => b.type === 'text').map((b) => b.text).join('');
}

function collect(out, event) {
  // A copy as it arrived: the stream helper goes on mutating the message of message_start.
  out.events.push(structuredClone(event));
  if (event.type === 'content_block_delta' && event.delta?.type === 'text_delta') out.text += event.delta.text;
}

async function call(client, op, out) {
  if (op.call === 'models') {
    const models = [];
    for await (const model of client.models.list()) models.push(model);
    out.headers = true;
    out.result = models;
  } else if (op.call === 'count_tokens') {
    const { data, request_id } = await client.messages.countTokens(op.params).withResponse();
    out.headers = true;
    out.request_id = request_id ?? null;
    out.result = data;
  } else if (op.call === 'stream') {
    const stream = client.messages.stream(op.params);
    stream.on('connect', () => {
      out.headers = true;
    });
    stream.on('streamEvent', (event) => collect(out, event));
    try {
      out.result = await stream.finalMessage();
    } finally {
      out.request_id = stream.request_id ?? null;
    }
  } else if (op.call === 'create') {
    const { data, request_id } = await client.messages.create(op.params).withResponse();
    out.headers = true;
    out.request_id = request_id ?? null;
    if (op.params.stream) {
      for await (const event of data) collect(out, event);
    } else {
      out.result = data;
      out.text = textOf(data);
    }
  } else {
    throw new Error(`unknown op.call ${JSON.stringify(op.call)}`);
  }
}

async function run(op) {
  const sink = { raw: '', done: Promise.resolve(), fetchError: null };
  const options = {
    baseURL: op.baseURL,
    apiKey: op.apiKey === undefined ? 'sk-test' : op.apiKey,
    maxRetries: 0,
    fetch: watchedFetch(sink, op.tap),
  };
  if (op.headers) options.defaultHeaders = op.headers;
  if (op.undici) options.fetchOptions = { dispatcher: new Agent(op.undici) };
  const client = new Anthropic(options);
  const out = { id: op.id, ok: false, headers: false, request_id: null, events: [], text: '', result: null };
  const started = performance.now();
  try {
    await call(client, op, out);
    out.ok = true;
  } catch (error) {
    out.error = describe(error);
    if (sink.fetchError) {
      out.error.fetch = describe(sink.fetchError);
      out.error.undici ??= out.error.fetch.undici;
    }
  }
  out.elapsed_ms = Math.round(performance.now() - started);
  if (op.tap) {
    await sink.done;
    out.raw = sink.raw;
  }
  return out;
}

await runOps(run);
