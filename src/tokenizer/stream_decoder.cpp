#include "helios/tokenizer/stream_decoder.h"

#include "helios/tokenizer/utf8.h"

namespace helios::tokenizer {

std::string StreamDecoder::push(int32_t id) {
  const int32_t ids[] = {id};
  const std::string bytes = tokenizer_->decode(ids);  // may throw: leave pending_ intact
  std::string text = std::move(pending_);
  text += bytes;
  const size_t keep = text.size() - incomplete_utf8_tail(text);
  pending_ = std::string_view(text).substr(keep);
  text.resize(keep);
  return text;
}

std::string StreamDecoder::finish() {
  std::string rest = std::move(pending_);
  pending_.clear();
  return rest;
}

}  // namespace helios::tokenizer
