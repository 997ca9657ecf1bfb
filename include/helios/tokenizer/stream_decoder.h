#pragma once

#include <cstdint>
#include <string>

#include "helios/tokenizer/tokenizer.h"

namespace helios::tokenizer {

// Turns a stream of token ids into text for streaming responses. A token may end in the middle
// of a UTF-8 character (byte-level BPE splits characters freely), so the decoder holds back a
// trailing, still incomplete but so far well-formed UTF-8 sequence until the bytes that
// complete it arrive.
//
// Ill-formed bytes are passed through unchanged as soon as they are known to be ill-formed (a
// held-back prefix that the next byte does not continue, a stray continuation byte, and at
// finish() whatever is still held): no U+FFFD is substituted, so the concatenation of all
// push() results and finish() is exactly tokenizer.decode(all ids). Callers that need valid
// UTF-8 (e.g. JSON output) sanitize at that edge.
//
// Not thread-safe; one decoder per stream. The tokenizer must outlive it.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  // Decodes one more token and returns the text it completes (possibly empty).
  std::string push(int32_t id);
  // Returns whatever is still held back and starts a new stream.
  std::string finish();
  // Bytes currently held back (0-3).
  size_t pending_bytes() const { return pending_.size(); }

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace helios::tokenizer
