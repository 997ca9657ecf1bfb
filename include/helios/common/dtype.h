#pragma once

// The floating dtypes helios loads, stores and computes in, by name. Each has two spellings:
// config.json's torch_dtype name ("bfloat16"), and the short one `helios convert` takes
// ("bf16").

#include <c10/core/ScalarType.h>

#include <string>
#include <string_view>

namespace helios {

enum class DtypeSpelling { kTorch, kShort };

// The dtype `name` spells; for any other name, Error(kInvalidArgument) "<field> must be
// <the three names in `spelling`>, got <name>".
c10::ScalarType parse_dtype(std::string_view name, DtypeSpelling spelling, std::string_view field);

// `dtype`'s name in `spelling`; c10's own name for a dtype outside the three.
std::string dtype_name(c10::ScalarType dtype, DtypeSpelling spelling = DtypeSpelling::kTorch);

}  // namespace helios
