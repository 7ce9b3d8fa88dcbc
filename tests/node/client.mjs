// Drives the official `openai` npm package on this machine's Node.js for the e2e suite.
//
// stdin:  {"ops": [op, ...]}; every op runs at once (Promise.all), each with its own client.
//   op.id        echoed back
//   op.baseURL   gateway or fake upstream, ".../v1"
//   op.call      "chat" | "completions" | "models"
//   op.params    the create() body; unknown keys (the fake's script) are sent as they are
//   op.apiKey    default "sk-test"
//   op.undici    {headersTimeout, bodyTimeout} in ms: Node's fetch gets an Agent from the npm
//                `undici` package (the library Node's fetch is built on) with these timers
//                as its dispatcher; absent: Node's fetch as it comes (300 s each)
//   op.tap       also record the raw response text as fetch received it
// stdout: {"results": [result, ...]} in op order, one JSON document.
//   result.ok          the call and the whole iteration finished without an error
//   result.headers     create() resolved (a stream's status and headers arrived)
//   result.chunks      a stream's parsed chunks as the SDK handed them to the application
//   result.text        their content (chat) or text (completions), concatenated
//   result.result      a non-stream result, or the model list
//   result.raw         with op.tap: the bytes fetch received, as text
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
  const sink = { raw: '', done: Promise.resolve(), fetchError: null };
  const options = {
    baseURL: op.baseURL,
    apiKey: op.apiKey ?? 'sk-test',
    maxRetries: 0,
    fetch: watchedFetch(sink, op.tap),
  };
  if (op.undici) options.fetchOptions = { dispatcher: new Agent(op.undici) };
  const client = new OpenAI(options);
  const out = { id: op.id, ok: false, headers: false, chunks: [], text: '', result: null };
  const started = performance.now();
  try {
    if (op.call === 'models') {
      const models = [];
      for await (const model of client.models.list()) models.push(model);
      out.headers = true;
      out.result = models;
    } else {
      const resource = op.call === 'chat' ? client.chat.completions : client.completions;
      const answer = await resource.create(op.params);
      out.headers = true;
      if (op.params.stream) {
        for await (const chunk of answer) {
          out.chunks.push(chunk);
          const choice = chunk.choices?.[0];
          out.text += (op.call === 'chat' ? choice?.delta?.content : choice?.text) ?? '';
        }
      } else {
        out.result = answer;
        const choice = answer.choices?.[0];
        out.text = (op.call === 'chat' ? choice?.message?.content : choice?.text) ?? '';
      }
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
  if (op.tap) {
    await sink.done;
    out.raw = sink.raw;
  }
  return out;
}

await runOps(run);
