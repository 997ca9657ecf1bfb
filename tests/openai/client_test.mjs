// Drives helios's OpenAI-compatible HTTP API with the official `openai` npm client (pinned in
// package.json next to this file; scripts/setup.sh installs it into ./node_modules):
//
//   node tests/openai/client_test.mjs --base-url http://127.0.0.1:PORT/v1 --api-key KEY \
//        --model MODEL [--timeout-s 60]
//
// Checks: /v1/models lists MODEL; /v1/completions non-stream (response shape, usage, the `helios`
// extension, list prompts, priority, default max_tokens), streaming (chunk shape, include_usage,
// streamed text == non-stream greedy text, `data: [DONE]`), seeded determinism, stop strings,
// the OpenAI error objects (401 wrong key, 404 unknown model, 400 naming the param, also for a
// stream), /v1/chat/completions without a chat template, a cancelled stream leaving the server
// healthy, 8 concurrent requests. Prints `ok - name` / `not ok - name: detail` per check and a
// summary; exit status 0 when every check passed, 1 otherwise, 2 for usage or setup errors.
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const usage = 'usage: client_test.mjs --base-url URL --api-key KEY --model MODEL [--timeout-s S]';
let args;
try {
  ({ values: args } = parseArgs({ options: {
    'base-url': { type: 'string' }, 'api-key': { type: 'string' }, model: { type: 'string' },
    'timeout-s': { type: 'string', default: '60' } } }));
} catch (e) { console.error(`${e.message}\n${usage}`); process.exit(2); }
if (!args['base-url'] || !args['api-key'] || !args.model) { console.error(usage); process.exit(2); }
const BASE_URL = args['base-url'].replace(/\/+$/, ''), API_KEY = args['api-key'], MODEL = args.model;
const TIMEOUT_MS = Number(args['timeout-s']) * 1000;

// The client is resolved from this script's directory, whatever the working directory.
const pinned = JSON.parse(readFileSync(new URL('./package.json', import.meta.url))).dependencies.openai;
const manifest = new URL('./node_modules/openai/package.json', import.meta.url);
const installed = existsSync(manifest) ? JSON.parse(readFileSync(manifest)).version : null;
if (installed !== pinned) {
  console.error(`client_test: the openai npm client ${pinned} is not installed in ` +
    `${fileURLToPath(new URL('./node_modules', import.meta.url))} (found: ${installed ?? 'none'}); ` +
    'run scripts/setup.sh');
  process.exit(2);
}
const { default: OpenAI } = await import('openai');

const client = new OpenAI({ baseURL: BASE_URL, apiKey: API_KEY, maxRetries: 0, timeout: TIMEOUT_MS });

// ---- harness ----------------------------------------------------------------------------------
class Skip extends Error {}
const checks = [];
const check = (name, fn) => checks.push({ name, fn });
function expect(cond, detail) { if (!cond) throw new Error(detail); }
const show = (v) => JSON.stringify(v);
function eq(actual, expected, what) {
  expect(actual === expected, `${what}: expected ${show(expected)}, got ${show(actual)}`);
}
const isInt = (v) => Number.isInteger(v);
const isNum = (v) => typeof v === 'number' && Number.isFinite(v);

// Runs `fn` and expects it to throw `Cls`; `want` lists fields the error must have.
async function expectError(fn, Cls, want) {
  let err;
  try { await fn(); } catch (e) { err = e; }
  expect(err, `expected ${Cls.name} (${show(want)}), the request succeeded`);
  if (!(err instanceof Cls)) throw new Error(`expected ${Cls.name}, got ${err.name ?? err}: ${err.message}`);
  for (const [key, value] of Object.entries(want)) {
    if (key === 'message') expect(err.message.toLowerCase().includes(value.toLowerCase()),
      `error message ${show(err.message)} does not mention ${show(value)}`);
    else eq(err[key], value, `error.${key} (${err.message})`);
  }
}

// Checks the shape of a non-stream completion with `prompts` prompts; returns it.
function checkCompletion(c, prompts = 1) {
  eq(c.object, 'text_completion', 'object');
  expect(typeof c.id === 'string' && c.id.startsWith('cmpl-'), `id ${show(c.id)}`);
  expect(isInt(c.created), `created ${show(c.created)}`);
  eq(c.model, MODEL, 'model');
  eq(c.choices?.length, prompts, 'choices.length');
  c.choices.forEach((ch, i) => {
    eq(ch.index, i, `choices[${i}].index`);
    eq(typeof ch.text, 'string', `choices[${i}].text type`);
    eq(ch.logprobs, null, `choices[${i}].logprobs`);
    expect(['stop', 'length'].includes(ch.finish_reason), `choices[${i}].finish_reason ${show(ch.finish_reason)}`);
  });
  const u = c.usage;
  expect(isInt(u?.prompt_tokens) && u.prompt_tokens > 0, `usage.prompt_tokens ${show(u)}`);
  expect(isInt(u.completion_tokens) && u.completion_tokens >= 0, `usage.completion_tokens ${show(u)}`);
  eq(u.total_tokens, u.prompt_tokens + u.completion_tokens, 'usage.total_tokens');
  eq(c.helios?.choices?.length, prompts, 'helios.choices.length');
  return c;
}

function checkHelios(h, index, tokens) {
  expect(h, `no helios entry for choice ${index}`);
  eq(h.index, index, 'helios index');
  expect(typeof h.model === 'string' && h.model.length > 0, `helios model ${show(h.model)}`);
  expect(Array.isArray(h.exit_layers), `helios exit_layers ${show(h.exit_layers)}`);
  if (tokens !== undefined) eq(h.exit_layers.length, tokens, 'helios exit_layers.length');
  expect(h.exit_layers.every((l) => isInt(l) && l >= 1), `exit_layers ${show(h.exit_layers)}`);
  for (const key of ['mean_exit_layer', 'time_to_first_token_ms', 'queue_time_ms'])
    expect(isNum(h[key]), `helios ${key} ${show(h[key])}`);
  // A number only when the body asked for it (helios.score_prompt), else null.
  expect(h.prompt_perplexity === null || isNum(h.prompt_perplexity),
    `helios prompt_perplexity ${show(h.prompt_perplexity)}`);
  expect(isInt(h.preemptions) && isInt(h.priority), `helios preemptions/priority ${show(h)}`);
}

const greedy = (prompt, max_tokens, extra = {}) => ({ model: MODEL, prompt, max_tokens, temperature: 0, ...extra });
const PROMPT = 'The quick brown fox jumps over';

// Reads a whole stream: per-choice text, the finishing chunk of each choice, the usage chunk.
async function readStream(stream) {
  const out = { texts: [], finals: [], usage: null };
  for await (const chunk of stream) {
    eq(chunk.object, 'text_completion', 'chunk object');
    if (chunk.choices.length === 0) {
      expect(chunk.usage && !out.usage, `chunk without choices: ${show(chunk)}`);
      out.usage = chunk.usage;
      continue;
    }
    expect(!out.usage, 'a chunk with choices after the usage chunk');
    for (const ch of chunk.choices) {
      expect(!out.finals[ch.index], `choice ${ch.index} has a chunk after its finish_reason`);
      eq(ch.logprobs, null, 'chunk logprobs');
      out.texts[ch.index] = (out.texts[ch.index] ?? '') + ch.text;
      if (ch.finish_reason !== null) out.finals[ch.index] = { chunk, choice: ch };
    }
  }
  return out;
}

// ---- models -----------------------------------------------------------------------------------
check('models: list contains the model', async (o) => {
  const ids = [];
  for await (const m of client.models.list(o)) {
    ids.push(m.id);
    if (m.id === MODEL) { eq(m.object, 'model', 'object'); eq(m.owned_by, 'helios', 'owned_by'); }
  }
  expect(ids.includes(MODEL), `${MODEL} not in ${show(ids)}`);
});

// ---- non-stream completions ---------------------------------------------------------------------
const nonStream = {};  // greedy texts reused by later checks
check('completions: greedy, max_tokens 12 -> finish_reason length', async (o) => {
  const c = checkCompletion(await client.completions.create(greedy(PROMPT, 12), o));
  eq(c.choices[0].finish_reason, 'length', 'finish_reason');
  eq(c.usage.completion_tokens, 12, 'usage.completion_tokens');
  checkHelios(c.helios.choices[0], 0, 12);
  nonStream.text = c.choices[0].text;
});

check('completions: default max_tokens is 16', async (o) => {
  const c = checkCompletion(await client.completions.create({ model: MODEL, prompt: PROMPT, temperature: 0 }, o));
  const n = c.usage.completion_tokens;
  if (c.choices[0].finish_reason === 'length') eq(n, 16, 'completion_tokens');
  else expect(n <= 16, `completion_tokens ${n} > 16`);
});

check('completions: list prompt -> one choice per prompt, usage summed', async (o) => {
  const prompts = ['Hello', 'Once upon a time there was'];
  const c = checkCompletion(await client.completions.create(greedy(prompts, 5), o), 2);
  let promptTokens = 0;
  for (const p of prompts) promptTokens += (await client.completions.create(greedy(p, 1), o)).usage.prompt_tokens;
  eq(c.usage.prompt_tokens, promptTokens, 'usage.prompt_tokens (sum over the prompts)');
  c.helios.choices.forEach((h, i) => checkHelios(h, i));
  eq(c.usage.completion_tokens, c.helios.choices.reduce((s, h) => s + h.exit_layers.length, 0),
    'usage.completion_tokens (sum of the exit_layers)');
});

check('completions: priority, seed, top_p, user and unknown fields accepted', async (o) => {
  const c = checkCompletion(await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 4,
    temperature: 0.7, top_p: 0.9, seed: 7, user: 'client-test', priority: 3, no_such_field: true }, o));
  eq(c.helios.choices[0].priority, 3, 'helios priority');
});

check('completions: helios.score_prompt reports the prompt perplexity', async (o) => {
  const c = checkCompletion(await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 2,
    temperature: 0, helios: { score_prompt: true } }, o));
  const ppl = c.helios.choices[0].prompt_perplexity;
  expect(isNum(ppl) && ppl > 1, `prompt_perplexity ${show(ppl)}`);
});

check('completions: same seed at temperature 1 -> same text', async (o) => {
  const body = { model: MODEL, prompt: PROMPT, max_tokens: 16, temperature: 1, seed: 1234 };
  const a = await client.completions.create(body, o), b = await client.completions.create(body, o);
  eq(b.choices[0].text, a.choices[0].text, 'second text');
});

check('completions: stop string (and stop list) ends the text before it', async (o) => {
  // A seeded sample rather than greedy text: as reproducible, and less repetitive (a small
  // model's greedy text loops, leaving no substring that occurs once).
  const sampled = (extra = {}) => ({ model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 1,
    seed: 1234, ...extra });
  const full = (await client.completions.create(sampled(), o)).choices[0].text;
  const stop = pickStop(full);
  if (!stop) throw new Skip(`no unique ASCII substring in ${show(full)}`);
  const prefix = full.slice(0, full.indexOf(stop));
  for (const s of [stop, ['no-such-stop-string', stop]]) {
    const c = checkCompletion(await client.completions.create(sampled({ stop: s }), o));
    eq(c.choices[0].text, prefix, `text with stop ${show(s)} (full ${show(full)})`);
    eq(c.choices[0].finish_reason, 'stop', 'finish_reason');
  }
});

// A substring of 3 (else 4, 2) printable ASCII characters as near the middle of `text` as
// possible, not at its start, that occurs once in it.
function pickStop(text) {
  const mid = Math.floor(text.length / 2);
  for (const len of [3, 4, 2]) {
    const starts = [...Array(Math.max(0, text.length - len)).keys()].map((i) => i + 1)
      .sort((a, b) => Math.abs(a - mid) - Math.abs(b - mid));
    for (const i of starts) {
      const s = text.slice(i, i + len);
      if (/^[\x20-\x7e]+$/.test(s) && text.indexOf(s) === text.lastIndexOf(s)) return s;
    }
  }
  return null;
}

// ---- streaming ----------------------------------------------------------------------------------
check('stream: greedy text equals the non-stream text; include_usage', async (o) => {
  expect(nonStream.text !== undefined, 'needs the non-stream greedy check');
  const stream = await client.completions.create(
    greedy(PROMPT, 12, { stream: true, stream_options: { include_usage: true } }), o);
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  const last = chunks.at(-1);
  expect(last && last.choices.length === 0 && last.usage, `last chunk is not the usage chunk: ${show(last)}`);
  for (const chunk of chunks.slice(0, -1))
    expect('usage' in chunk && chunk.usage === null, `chunk usage not null: ${show(chunk)}`);
  const out = await readStream(chunks);
  eq(out.texts[0], nonStream.text, 'streamed text');
  const final = out.finals[0];
  expect(final, 'no chunk with a finish_reason');
  eq(final.choice.finish_reason, 'length', 'finish_reason');
  eq(out.usage.completion_tokens, 12, 'usage.completion_tokens');
  eq(out.usage.total_tokens, out.usage.prompt_tokens + 12, 'usage.total_tokens');
  checkHelios(final.chunk.helios?.choices?.find((h) => h.index === 0), 0, 12);
});

check('stream: list prompt -> each choice finishes once', async (o) => {
  const out = await readStream(await client.completions.create(greedy(['abc', 'xyz 123'], 6,
    { stream: true, stream_options: { include_usage: true } }), o));
  eq(out.finals.filter(Boolean).length, 2, 'choices with a finish_reason');
  for (const i of [0, 1]) checkHelios(out.finals[i].chunk.helios?.choices?.find((h) => h.index === i), i);
  expect(out.usage?.completion_tokens > 0, `usage ${show(out.usage)}`);
});

check('stream: SSE ends with data: [DONE]', async (o) => {
  const res = await fetch(`${BASE_URL}/completions`, { method: 'POST', signal: o.signal,
    headers: { authorization: `Bearer ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(greedy(PROMPT, 4, { stream: true })) });
  eq(res.status, 200, 'status');
  expect(res.headers.get('content-type')?.startsWith('text/event-stream'), `content-type ${res.headers.get('content-type')}`);
  const data = (await res.text()).split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
  eq(data.at(-1), '[DONE]', 'last data line');
  data.slice(0, -1).forEach((d) => JSON.parse(d));
});

check('stream: cancelled after 2 chunks, server still serves', async (o) => {
  const stream = await client.completions.create(greedy(PROMPT, 200, { stream: true }), o);
  let n = 0;
  for await (const chunk of stream) { expect(chunk.choices.length === 1, show(chunk)); if (++n === 2) break; }
  eq(n, 2, 'chunks read');
  checkCompletion(await client.completions.create(greedy(PROMPT, 4), o));
});

// ---- errors -------------------------------------------------------------------------------------
check('errors: wrong API key -> 401', (o) => {
  const bad = new OpenAI({ baseURL: BASE_URL, apiKey: `${API_KEY}-wrong`, maxRetries: 0, timeout: TIMEOUT_MS });
  return expectError(() => bad.completions.create(greedy(PROMPT, 2), o), OpenAI.AuthenticationError,
    { status: 401, code: 'invalid_api_key' });
});

check('errors: unknown model -> 404 model_not_found', (o) => expectError(
  () => client.completions.create({ ...greedy(PROMPT, 2), model: `${MODEL}-no-such-model` }, o),
  OpenAI.NotFoundError, { status: 404, code: 'model_not_found' }));

const invalid = [  // [name, body fields, param, message fragment]
  ['max_tokens 1000000', { max_tokens: 1000000 }, 'max_tokens'],
  ['temperature 5', { temperature: 5 }, 'temperature'],
  ['top_p 0', { top_p: 0 }, 'top_p'],
  ['empty prompt', { prompt: '' }, 'prompt'],
  ['empty 2nd prompt of a list', { prompt: ['hello', ''] }, 'prompt', 'prompt[1]'],
  ['n 2', { n: 2 }, 'n'],
  ['best_of 2', { best_of: 2 }, 'best_of'],
  ['echo true', { echo: true }, 'echo'],
  ['logprobs 1', { logprobs: 1 }, 'logprobs'],
  ['suffix', { suffix: 'tail' }, 'suffix'],
  ['presence_penalty 0.5', { presence_penalty: 0.5 }, 'presence_penalty'],
  ['frequency_penalty 0.5', { frequency_penalty: 0.5 }, 'frequency_penalty'],
  ['logit_bias', { logit_bias: { 65: 1 } }, 'logit_bias'],
  ['priority out of range', { priority: 2 ** 40 }, 'priority'],
];
for (const [name, fields, param, message] of invalid) {
  check(`errors: ${name} -> 400 param ${param}`, (o) => expectError(
    () => client.completions.create({ ...greedy(PROMPT, 4), ...fields }, o), OpenAI.BadRequestError,
    { status: 400, type: 'invalid_request_error', param, ...(message ? { message } : {}) }));
}

check('errors: stream with temperature 5 -> 400 before any event', (o) => expectError(
  () => client.completions.create(greedy(PROMPT, 4, { stream: true, temperature: 5 }), o),
  OpenAI.BadRequestError, { status: 400, type: 'invalid_request_error', param: 'temperature' }));

check('chat: no chat template -> 400', (o) => expectError(
  () => client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }, o),
  OpenAI.BadRequestError, { status: 400, message: 'chat template' }));

// ---- concurrency --------------------------------------------------------------------------------
check('concurrency: 8 concurrent completions succeed', async (o) => {
  const all = await Promise.all([...Array(8).keys()].map((i) => client.completions.create(
    { model: MODEL, prompt: `${PROMPT} ${i}`, max_tokens: 8, temperature: 1, seed: 100 + i }, o)));
  all.forEach((c) => { checkCompletion(c); expect(c.usage.completion_tokens <= 8, `completion_tokens > 8: ${show(c.usage)}`); });
});

// ---- run ----------------------------------------------------------------------------------------
let failed = 0;
for (const { name, fn } of checks) {
  const abort = new AbortController();
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => {
    abort.abort();
    reject(new Error(`timed out after ${TIMEOUT_MS / 1000} s`));
  }, TIMEOUT_MS); });
  try {
    await Promise.race([fn({ signal: abort.signal }), timeout]);
    console.log(`ok - ${name}`);
  } catch (e) {
    if (e instanceof Skip) { console.log(`ok - ${name} (skipped: ${e.message})`); continue; }
    failed++;
    const detail = (e?.message ?? String(e)).replace(/\s*\n\s*/g, ' ');
    console.log(`not ok - ${name}: ${detail.length > 600 ? `${detail.slice(0, 600)}...` : detail}`);
  } finally { clearTimeout(timer); }
}
console.log(`# ${checks.length} checks: ${checks.length - failed} ok, ${failed} not ok (openai ${installed}, ${BASE_URL})`);
process.exit(failed ? 1 : 0);
