// Drives the official `openai` npm package's Responses API on this machine's Node.js for the
// e2e suite.
//
// stdin:  {"ops": [op, ...]}; every op runs at once (Promise.all), each with its own client.
//   op.id        echoed back
//   op.baseURL   gateway or fake upstream, ".../v1"
//   op.call      "stream"   the responses.stream(params) helper, every event, then
//                           finalResponse()
//                "create"   responses.create(params); params.stream true or false
//                "retrieve" responses.retrieve(op.responseId)
//   op.params    the call's body; unknown keys (the fake's script) are sent as they are
//   op.apiKey    default "sk-test"
//   op.undici    {headersTimeout, bodyTimeout} in ms: Node's fetch gets an Agent from the npm
//                `undici` package (the library Node's fetch is built on) with these timers
//                as its dispatcher; absent: Node's fetch as it comes (300 s each)
// stdout: {"results": [result, ...]} in op order, one JSON document.
//   result.ok          the call and the whole iteration finished without an error
//   result.events      a stream's events as the SDK handed them to the application, in order
//   result.text        the output_text deltas of a stream, or a response's output_text
//   result.result      "stream": finalResponse(); "create" non-stream and "retrieve": the
//                      response
//   result.error       {class, status, message, body, chain: [{name, code, message}], undici,
//                      fetch}: `undici` is the first UND_ERR_* code in the error's cause chain
//                      or in that of the failed fetch (`fetch`) the SDK was handed
//   result.elapsed_ms  from the call to its end or its error
//
// The SDK's retries are off (maxRetries 0) so an error shows the first failure as it is.

import { Agent } from 'undici';
import OpenAI from 'openai';

import { runOps } from './ops.mjs';

// Node's own fetch, watched: the SDK turns a fetch that fails with a timeout into its own
// APIConnectionTimeoutError and drops the cause, so the cause is kept here.
function watchedFetch(sink) {
  return async (url, init) => {
    try {
      return await fetch(url, init);
    } catch (error) {
      sink.fetchError = error;
      throw error;
    }
  };
}

function describe(error) {
  const chain = [];
  for (let e = error; e && chain.length < 8; e = e.cause) {
    chain.push({ name: e.constructor?.name ?? typeof e, code: e.code ?? null, message: String(e.message ?? e) });
  }
  const undici = chain.find((c) => typeof c.code === 'string' && c.code.startsWith('UND_ERR'));
  return {
    class: error?.constructor?.name ?? typeof error,
    status: error?.status ?? null,
    message: String(error?.message ?? error),
    body: error?.error ?? null,
    chain,
    undici: undici ? undici.code : null,
  };
}

async function run(op) {
  const sink = { fetchError: null };
  const options = {
    baseURL: op.baseURL,
    apiKey: op.apiKey ?? 'sk-test',
    maxRetries: 0,
    fetch: watchedFetch(sink),
  };
  if (op.undici) options.fetchOptions = { dispatcher: new Agent(op.undici) };
  const client = new OpenAI(options);
  const out = { id: op.id, ok: false, events: [], text: '', result: null };
  const started = performance.now();
  const take = (event) => {
    out.events.push(event);
    if (event.type === 'response.output_text.delta') out.text += event.delta;
  };
  try {
    if (op.call === 'stream') {
      const stream = client.responses.stream(op.params);
      for await (const event of stream) take(event);
      out.result = await stream.finalResponse();
    } else if (op.call === 'create') {
      const answer = await client.responses.create(op.params);
      if (op.params.stream) {
        for await (const event of answer) take(event);
      } else {
        out.result = answer;
        out.text = answer.output_text ?? '';
      }
    } else if (op.call === 'retrieve') {
      out.result = await client.responses.retrieve(op.responseId);
      out.text = out.result.output_text ?? '';
    } else {
      throw new Error(`unknown call ${op.call}`);
    }
    out.ok = true;
  } catch (error) {
    out.error = describe(error);
    if (sink.fetchError) {
      out.error.fetch = describe(sink.fetchError);
      out.error.undici ??= out.error.fetch.undici;
    }
  }
  out.elapsed_ms = Math.round(performance.now() - started);
  return out;
}

await runOps(run);
