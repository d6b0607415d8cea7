// The official `openai` npm package, used unchanged, against a running
// airlockd. Run by tests/daemon/e2e_test.cpp (OfficialOpenAiNodeSdk):
//   node openai_sdk_test.mjs   with AIRLOCK_BASE_URL, AIRLOCK_API_KEY,
//   AIRLOCK_FULL_BASE_URL (a daemon whose queue is always full),
//   AIRLOCK_TOOLS_BASE_URL and AIRLOCK_TOOLS_API_KEY (a daemon serving a
//   test model that answers with a tool call; optional),
//   AIRLOCK_THINKING_BASE_URL and AIRLOCK_THINKING_API_KEY (a daemon
//   serving a test model that thinks, then answers {"a": 1}; optional) and
//   NODE_PATH-style AIRLOCK_OPENAI_MODULE (the installed package's entry).
// Prints one line per check; exits 1 on the first failure.
const { default: OpenAI, AuthenticationError, BadRequestError, RateLimitError } = await import(process.env.AIRLOCK_OPENAI_MODULE);

function check(cond, what) {
  if (!cond) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

const client = new OpenAI({ baseURL: process.env.AIRLOCK_BASE_URL, apiKey: process.env.AIRLOCK_API_KEY, maxRetries: 0 });

const models = await client.models.list();
const ids = [];
for await (const m of models) ids.push(m.id);
check(ids.length === 1 && ids[0] === 'stories', `models.list() gives [${ids}]`);

const whole = await client.chat.completions.create({
  model: 'stories',
  messages: [{ role: 'user', content: 'Tell me a story.' }],
  max_tokens: 24,
  temperature: 0,
});
check(whole.choices[0].message.role === 'assistant', 'non-streamed chat: assistant message');
check(typeof whole.choices[0].message.content === 'string' && whole.choices[0].message.content.length > 0,
      'non-streamed chat: content');
check(whole.usage.total_tokens === whole.usage.prompt_tokens + whole.usage.completion_tokens, 'non-streamed chat: usage');

// reasoning_effort, as the SDK types it, is taken (a chat template
// variable; this model's template does not read it, so the prompt is the
// same); a value OpenAI does not define raises BadRequestError naming it.
const effort = await client.chat.completions.create({
  model: 'stories', messages: [{ role: 'user', content: 'Tell me a story.' }], max_tokens: 1, reasoning_effort: 'low',
});
check(effort.usage.prompt_tokens === whole.usage.prompt_tokens, 'reasoning_effort: low is taken');
try {
  await client.chat.completions.create({
    model: 'stories', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1, reasoning_effort: 'extreme',
  });
  check(false, 'reasoning_effort extreme raises');
} catch (e) {
  check(e instanceof BadRequestError && e.param === 'reasoning_effort',
        `reasoning_effort extreme raises BadRequestError naming it (${e.constructor.name}, ${e.param})`);
}
const reffort = await client.responses.create({ model: 'stories', input: 'Hi', max_output_tokens: 1,
                                                reasoning: { effort: 'minimal' } });
check(reffort.reasoning?.effort === 'minimal', `responses: reasoning.effort is taken and repeated (${JSON.stringify(reffort.reasoning)})`);

const stream = await client.chat.completions.create({
  model: 'stories',
  messages: [{ role: 'user', content: 'Tell me a story.' }],
  max_tokens: 24,
  temperature: 0,
  stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let finish = null;
let usage = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  for (const c of chunk.choices) {
    text += c.delta?.content ?? '';
    if (c.finish_reason) finish = c.finish_reason;
  }
}
check(text === whole.choices[0].message.content, 'streamed chat (for await) equals the non-streamed answer');
check(finish === whole.choices[0].finish_reason, `streamed finish_reason ${finish}`);
check(usage && usage.completion_tokens === whole.usage.completion_tokens, 'streamed usage chunk');

// The Responses API: the same answer as chat, whole, streamed with for
// await, and assembled by the SDK's stream helper (which throws on events
// it cannot place).
const rparams = { model: 'stories', input: 'Tell me a story.', max_output_tokens: 24, temperature: 0 };
const resp = await client.responses.create(rparams);
check(resp.object === 'response' && resp.id.startsWith('resp_') && resp.output_text === whole.choices[0].message.content,
      `responses.create: output_text equals the chat answer (${JSON.stringify(resp.output_text)})`);
check(resp.usage.input_tokens === whole.usage.prompt_tokens && resp.usage.output_tokens === whole.usage.completion_tokens,
      'responses.create: usage');
let rtext = '';
let ended = null;
for await (const ev of await client.responses.create({ ...rparams, stream: true })) {
  if (ev.type === 'response.output_text.delta') rtext += ev.delta;
  if (ev.type === 'response.completed' || ev.type === 'response.incomplete') ended = ev.response;
}
check(rtext === resp.output_text && ended?.status === resp.status, `responses streamed (for await): the same text, ${ended?.status}`);
const helper = await client.responses.stream(rparams).finalResponse();
const helperText = helper.output.filter((o) => o.type === 'message').flatMap((o) => o.content).map((c) => c.text).join('');
check(helperText === resp.output_text, 'responses.stream().finalResponse() assembles the same text');

const completion = await client.completions.create({ model: 'stories', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
check(completion.choices[0].text.length > 0, 'completions.create');

if (process.env.AIRLOCK_HAS_EMBEDDER === '1') {
  // The SDK asks for base64 by default and decodes it.
  const emb = await client.embeddings.create({ model: 'stories', input: ['hello world', 'a second text'] });
  check(emb.data.length === 2 && emb.data[0].embedding.length === 2 && Number.isFinite(emb.data[0].embedding[0]),
        'embeddings.create gives two 2-dimensional vectors');
  const norm = Math.hypot(...emb.data[0].embedding);
  check(Math.abs(norm - 1) < 1e-5, `embeddings are normalised (|v| = ${norm})`);
}

try {
  await new OpenAI({ baseURL: process.env.AIRLOCK_BASE_URL, apiKey: 'ak_wrong', maxRetries: 0 }).models.list();
  check(false, '401 raises');
} catch (e) {
  check(e instanceof AuthenticationError && e.status === 401, `wrong key raises AuthenticationError (${e.constructor.name})`);
}

// One running, one waiting: a burst of six overflows the queue.
const full = new OpenAI({ baseURL: process.env.AIRLOCK_FULL_BASE_URL, apiKey: process.env.AIRLOCK_API_KEY, maxRetries: 0 });
const burst = await Promise.allSettled(Array.from({ length: 6 }, () =>
  // ignore_eos (an airlockd extension, passed through by the SDK): each
  // admitted request holds its slot for all 200 tokens.
  full.chat.completions.create({ model: 'stories', messages: [{ role: 'user', content: 'go' }], max_tokens: 200,
                                 ignore_eos: true })));
const limited = burst.filter((r) => r.status === 'rejected');
check(burst.some((r) => r.status === 'fulfilled'), 'a burst: some requests are served');
check(limited.length > 0 && limited.every((r) => r.reason instanceof RateLimitError && r.reason.status === 429),
      `a burst: the overflow raises RateLimitError (${limited.map((r) => r.reason?.constructor?.name)})`);
if (process.env.AIRLOCK_TOOLS_BASE_URL) {
  // A test model that always answers "Checking." and a call of get_weather
  // for Paris in its template's (Hermes) form.
  const tools = new OpenAI({ baseURL: process.env.AIRLOCK_TOOLS_BASE_URL, apiKey: process.env.AIRLOCK_TOOLS_API_KEY, maxRetries: 0 });
  const params = {
    model: 'stories',
    messages: [{ role: 'user', content: 'Weather in Paris?' }],
    // strict, as the Agents SDK and pydantic_function_tool send it: the
    // call's arguments are checked against the schema.
    tools: [{ type: 'function', function: { name: 'get_weather', strict: true,
                                             parameters: { type: 'object', properties: { city: { type: 'string' } },
                                                           required: ['city'], additionalProperties: false } } }],
    temperature: 0,
  };
  const called = await tools.chat.completions.create(params);
  const call = called.choices[0].message.tool_calls?.[0];
  check(called.choices[0].finish_reason === 'tool_calls' && call?.type === 'function' && call.function.name === 'get_weather',
        'tool call: create() gives message.tool_calls');
  check(JSON.parse(call.function.arguments).city === 'Paris', `tool call arguments ${call.function.arguments}`);
  // The SDK's stream helper merges the deltas (it throws on ones it cannot).
  const final = await tools.chat.completions.stream(params).finalChatCompletion();
  const streamed = final.choices[0].message;
  check(streamed.content === 'Checking.' && streamed.tool_calls?.length === 1 &&
        streamed.tool_calls[0].function.name === 'get_weather' &&
        streamed.tool_calls[0].function.arguments === call.function.arguments,
        'tool call: stream().finalChatCompletion() assembles the same call');
  // The call and its result sent back, as an agent loop does.
  const next = await tools.chat.completions.create({
    ...params,
    messages: [...params.messages, called.choices[0].message,
               { role: 'tool', tool_call_id: call.id, content: '18 C, clear' }],
  });
  check(next.choices.length === 1, 'tool call: the conversation with the call and its result is accepted');
  // The Responses API: a message item and a function_call item.
  const rtools = [{ type: 'function', name: 'get_weather', strict: true,
                    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'],
                                  additionalProperties: false } }];
  const rcalled = await tools.responses.create({ model: 'stories', input: 'Weather in Paris?', tools: rtools, temperature: 0 });
  const fc = rcalled.output.find((o) => o.type === 'function_call');
  check(rcalled.output_text === 'Checking.' && fc?.name === 'get_weather' && JSON.parse(fc.arguments).city === 'Paris',
        `responses tool call: output_text and a function_call item (${JSON.stringify(rcalled.output)})`);
  const rfinal = await tools.responses.stream({ model: 'stories', input: 'Weather in Paris?', tools: rtools, temperature: 0 })
    .finalResponse();
  const sfc = rfinal.output.find((o) => o.type === 'function_call');
  check(sfc?.arguments === fc.arguments && sfc.call_id.startsWith('call_'),
        'responses tool call: stream().finalResponse() assembles the same call');
  const rnext = await tools.responses.create({
    model: 'stories', tools: rtools, temperature: 0,
    input: [{ role: 'user', content: 'Weather in Paris?' }, ...rcalled.output,
            { type: 'function_call_output', call_id: fc.call_id, output: '18 C, clear' }],
  });
  check(rnext.status === 'completed' || rnext.status === 'incomplete',
        'responses tool call: the items sent back with the output are accepted');
  // tool_choice "required": the model would write "Checking." first; held
  // to calls, it writes the call alone (its city one of an enum: the test
  // model takes the allowed token of lowest id where its own is refused).
  // parse() gives the strict call's arguments parsed.
  const forced = await tools.chat.completions.parse({
    ...params,
    tools: [{ type: 'function', function: { name: 'get_weather', strict: true,
                                             parameters: { type: 'object', properties: { city: { type: 'string', enum: ['Paris', 'Rome'] } },
                                                           required: ['city'], additionalProperties: false } } }],
    tool_choice: 'required',
  });
  const fm = forced.choices[0].message;
  check(forced.choices[0].finish_reason === 'tool_calls' && fm.content === null && fm.tool_calls?.length === 1 &&
        fm.tool_calls[0].function.parsed_arguments?.city === 'Paris',
        `tool_choice required: parse() gives the call alone (${JSON.stringify(fm)})`);
}

if (process.env.AIRLOCK_THINKING_BASE_URL) {
  // A test model whose prompt opens its thinking: it writes
  // "Thinking it over.\n</think>\n\n" then {"a": 1}.
  const thinking = new OpenAI({ baseURL: process.env.AIRLOCK_THINKING_BASE_URL,
                                apiKey: process.env.AIRLOCK_THINKING_API_KEY, maxRetries: 0 });
  const params = {
    model: 'stories',
    messages: [{ role: 'user', content: 'Answer in JSON.' }],
    response_format: { type: 'json_object' },
    temperature: 0,
  };
  const answer = await thinking.chat.completions.create(params);
  const message = answer.choices[0].message;
  check(JSON.stringify(JSON.parse(message.content)) === '{"a":1}', `json_object: JSON.parse(content) of ${message.content}`);
  check(message.reasoning_content === 'Thinking it over.' && message.reasoning === message.reasoning_content,
        'reasoning: message.reasoning_content and .reasoning');
  check(answer.usage.completion_tokens_details?.reasoning_tokens > 0, 'reasoning: usage.completion_tokens_details.reasoning_tokens');
  let content = '';
  let reasoning = '';
  for await (const chunk of await thinking.chat.completions.create({ ...params, stream: true })) {
    content += chunk.choices[0]?.delta?.content ?? '';
    reasoning += chunk.choices[0]?.delta?.reasoning_content ?? '';
  }
  check(content === message.content && reasoning === message.reasoning_content,
        'reasoning and json_object streamed with for await: the same content and reasoning');
  // Structured outputs: parse() with a json_schema response format gives
  // message.parsed.
  const parsed = await thinking.chat.completions.parse({
    ...params,
    response_format: { type: 'json_schema',
                       json_schema: { name: 'answer', strict: true,
                                      schema: { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'],
                                                additionalProperties: false } } },
  });
  check(parsed.choices[0].message.parsed?.a === 1 && parsed.choices[0].message.reasoning_content === 'Thinking it over.',
        `json_schema: parse() gives message.parsed (${JSON.stringify(parsed.choices[0].message)})`);
  // A schema the model's own answer does not fit (a bound, a pattern): the
  // answer is held to it.
  const held = await thinking.chat.completions.parse({
    ...params,
    response_format: { type: 'json_schema',
                       json_schema: { name: 'held', strict: true,
                                      schema: { type: 'object',
                                                properties: { a: { type: 'integer', minimum: 5, maximum: 9 },
                                                              b: { type: 'string', pattern: '^[x-z]{2}$' } },
                                                required: ['a', 'b'], additionalProperties: false } } },
  });
  // The Responses API: the reasoning item, and parse() with text.format.
  const rparsed = await thinking.responses.parse({
    model: 'stories', input: 'Answer in JSON.', temperature: 0,
    text: { format: { type: 'json_schema', name: 'answer', strict: true,
                      schema: { type: 'object', properties: { a: { type: 'integer' } }, required: ['a'],
                                additionalProperties: false } } },
  });
  const ritem = rparsed.output.find((o) => o.type === 'reasoning');
  check(rparsed.output_parsed?.a === 1 && ritem?.content?.[0]?.text === 'Thinking it over.',
        `responses: parse() gives output_parsed and a reasoning item (${JSON.stringify(rparsed.output)})`);
  check(rparsed.usage.output_tokens_details.reasoning_tokens > 0, 'responses: usage.output_tokens_details.reasoning_tokens');
  const hp = held.choices[0].message.parsed;
  check(Number.isInteger(hp?.a) && hp.a >= 5 && hp.a <= 9 && /^[x-z]{2}$/.test(hp?.b ?? ''),
        `json_schema: bounds and pattern held (${JSON.stringify(held.choices[0].message)})`);
}

console.log('all checks passed');
