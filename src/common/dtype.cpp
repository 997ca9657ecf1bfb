#include "helios/common/dtype.h"

#include <fmt/format.h>

#include <array>

#include "helios/common/error.h"

namespace helios {
namespace {

struct Named {
  c10::ScalarType dtype;
  std::string_view torch, short_name;
  std::string_view in(DtypeSpelling spelling) const {
    return spelling == DtypeSpelling::kTorch ? torch : short_name;
  }
};

constexpr std::array<Named, 3> kDtypes{{
    {c10::kFloat, "float32", "f32"},
    {c10::kHalf, "float16", "f16"},
    {c10::kBFloat16, "bfloat16", "bf16"},
}};

}  // namespace

c10::ScalarType parse_dtype(std::string_view name, DtypeSpelling spelling, std::string_view field) {
  for (const Named& d : kDtypes) {
    if (d.in(spelling) == name) return d.dtype;
  }
  throw Error(ErrorCode::kInvalidArgument,
              fmt::format("{} must be {}, {} or {}, got {}", field, kDtypes[0].in(spelling),
                          kDtypes[1].in(spelling), kDtypes[2].in(spelling), name));
}

std::string dtype_name(c10::ScalarType dtype, DtypeSpelling spelling) {
  for (const Named& d : kDtypes) {
    if (d.dtype == dtype) return std::string(d.in(spelling));
  }
  return c10::toString(dtype);
}

}  // namespace helios
