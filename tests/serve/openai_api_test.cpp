// The OpenAI API's request parsing on its own: defaults, the fields refused by name, prompt
// lists, chat messages and the ChatML rendering, the error objects.
#include "helios/serve/openai_api.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace helios::serve {
namespace {

using nlohmann::json;

ApiError refusal(const json& body, bool chat = false) {
  try {
    parse_openai_request(body.dump(), chat);
  } catch (const ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted: " << body.dump();
  return ApiError(0, "");
}

TEST(OpenAiRequest, ACompletionTakesOpenAisDefaults) {
  const OpenAiRequest r = parse_openai_request(R"({"model": "m", "prompt": "hi"})", false);
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompts[0].prompt(), "hi");
  EXPECT_EQ(r.prompts[0].max_tokens(), 16u);
  EXPECT_FLOAT_EQ(r.prompts[0].temperature(), 1.0f);
  EXPECT_FALSE(r.prompts[0].has_top_p());
  EXPECT_FALSE(r.prompts[0].has_priority());
  EXPECT_TRUE(r.prompts[0].include_token_details());
  EXPECT_FALSE(r.stream);
}

TEST(OpenAiRequest, EveryFieldItHonoursReachesEachPrompt) {
  const OpenAiRequest r = parse_openai_request(
      R"({"model": "m", "prompt": ["a", "b"], "max_tokens": 5, "temperature": 0, "top_p": 0.5,
          "stop": "x", "seed": -1, "stream": true, "stream_options": {"include_usage": true},
          "user": "u", "priority": 2, "n": 1, "best_of": 1, "echo": false, "logprobs": null,
          "presence_penalty": 0, "logit_bias": {}, "helios": {"score_prompt": true},
          "some_future_field": [1, 2]})",
      false);
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  for (const auto& p : r.prompts) {
    EXPECT_EQ(p.max_tokens(), 5u);
    EXPECT_EQ(p.temperature(), 0.0f);
    EXPECT_FLOAT_EQ(p.top_p(), 0.5f);
    ASSERT_EQ(p.stop_size(), 1);
    EXPECT_EQ(p.stop(0), "x");
    EXPECT_EQ(p.seed(), ~uint64_t{0});
    EXPECT_EQ(p.priority(), 2u);
    EXPECT_TRUE(p.score_prompt());
  }
  EXPECT_EQ(r.prompts[1].prompt(), "b");
}

TEST(OpenAiRequest, FieldsHeliosCannotHonourAreRefusedByName) {
  const json base = {{"model", "m"}, {"prompt", "hi"}};
  const std::vector<std::pair<std::string, json>> cases = {
      {"n", 2},           {"best_of", 3},          {"echo", true},
      {"logprobs", 1},    {"suffix", "end"},       {"presence_penalty", 0.5},
      {"frequency_penalty", -1}, {"logit_bias", {{"1", 5}}}, {"max_tokens", 0},
      {"temperature", 2.5}, {"top_p", 0},          {"priority", -1},
      {"seed", 1.5},      {"stop", 3},             {"stream", "yes"},
      {"tools", json::array({json::object()})},    {"response_format", {{"type", "json_object"}}}};
  for (const auto& [field, value] : cases) {
    json body = base;
    body[field] = value;
    const ApiError e = refusal(body);
    EXPECT_EQ(e.status, 400) << field;
    EXPECT_EQ(e.param, field) << e.what();
    EXPECT_EQ(std::string(e.what()).rfind(field + ":", 0), 0u) << e.what();
  }
  EXPECT_EQ(refusal({{"prompt", "hi"}}).param, "model");
  EXPECT_EQ(refusal({{"model", "m"}}).param, "prompt");
  EXPECT_EQ(refusal({{"model", "m"}, {"prompt", json::array({1, 2})}}).param, "prompt");
  EXPECT_EQ(refusal({{"model", "m"}, {"prompt", json::array()}}).param, "prompt");
  EXPECT_EQ(refusal({{"model", "m"}, {"prompt", "x"}, {"stream_options", {{"include_usage", true}}}})
                .param,
            "stream_options");
  EXPECT_EQ(refusal(json::array()).status, 400);
  json deep = json::array();
  for (int i = 0; i < 100; ++i) deep = json::array({deep});
  EXPECT_EQ(refusal({{"model", "m"}, {"prompt", deep}}).status, 400);
}

TEST(OpenAiRequest, AChatIsRenderedAsChatML) {
  const OpenAiRequest r = parse_openai_request(
      R"({"model": "m", "messages": [{"role": "developer", "content": "Be brief."},
          {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
          {"role": "assistant", "content": null}]})",
      true);
  EXPECT_EQ(r.prompts.at(0).max_tokens(), 0u) << "a chat's default is the server's";
  const RenderedChat chat = render_chat(r.messages, ChatFormat::kChatML);
  EXPECT_EQ(chat.prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
            "<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(chat.stop, "<|im_end|>");
  EXPECT_EQ(refusal({{"model", "m"}, {"messages", {{{"role", "tool"}, {"content", "x"}}}}}, true).param,
            "messages");
  EXPECT_EQ(refusal({{"model", "m"}, {"messages", json::array()}}, true).param, "messages");
  EXPECT_EQ(refusal({{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "x"}}}},
                     {"logprobs", true}},
                    true)
                .param,
            "logprobs");
  EXPECT_TRUE(detect_chat_format("{{'<|im_start|>' + m.role}}...<|im_end|>"));
  EXPECT_FALSE(detect_chat_format("[INST] {{ m.content }} [/INST]"));
}

TEST(OpenAiRequest, ErrorsAreOpenAiErrorObjects) {
  const json body = ApiError(400, "stop[1]: must not be empty", "stop").body();
  EXPECT_EQ(body["error"]["message"], "stop[1]: must not be empty");
  EXPECT_EQ(body["error"]["type"], "invalid_request_error");
  EXPECT_EQ(body["error"]["param"], "stop");
  EXPECT_TRUE(body["error"]["code"].is_null());
  EXPECT_EQ(field_of_message("stop[1]: must not be empty"), "stop");
  EXPECT_EQ(field_of_message("max_tokens: 5 exceeds"), "max_tokens");
  EXPECT_EQ(field_of_message("the server is shutting down"), "");
  EXPECT_EQ(to_api_error(Error(ErrorCode::kResourceExhausted, "full")).status, 429);
  EXPECT_EQ(to_api_error(Error(ErrorCode::kResourceExhausted, "full")).code, "queue_full");
  EXPECT_EQ(to_api_error(Error(ErrorCode::kUnavailable, "x")).status, 503);
  EXPECT_EQ(to_api_error(Error(ErrorCode::kInvalidArgument, "prompt: empty")).param, "prompt");
}

}  // namespace
}  // namespace helios::serve
