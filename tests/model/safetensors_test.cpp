#include "helios/model/safetensors.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/expect_error.h"
#include "common/scratch_dir.h"
#include "helios/common/error.h"

namespace helios::model {
namespace {

namespace fs = std::filesystem;

// Each test's files live in a fresh directory.
class ScratchDir : public testing::ScratchDir {
 public:
  ScratchDir() : testing::ScratchDir("helios_safetensors") {}
};

// Writes a file byte for byte: u64 header length, header text, data. `declared_length` lets a
// test lie about the header length.
void write_raw(const fs::path& path, const std::string& header, const std::string& data,
               int64_t declared_length = -1) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t length = declared_length < 0 ? header.size() : declared_length;
  out.write(reinterpret_cast<const char*>(&length), sizeof(length));
  out << header << data;
}

std::string float_bytes(std::initializer_list<float> values) {
  std::string out(values.size() * sizeof(float), '\0');
  std::memcpy(out.data(), values.begin(), out.size());
  return out;
}

using testing::expect_error;

void expect_open_fails(const fs::path& path, const std::vector<std::string>& needles) {
  std::vector<std::string> all = needles;
  all.push_back(path.string());
  expect_error([&] { SafetensorsFile file(path); }, ErrorCode::kDataLoss, all);
}

class SafetensorsRoundTrip : public ::testing::TestWithParam<c10::ScalarType> {};

TEST_P(SafetensorsRoundTrip, ValuesSurviveWithinDtypePrecision) {
  const c10::ScalarType dtype = GetParam();
  ScratchDir dir;
  const fs::path path = dir.path() / "model.safetensors";
  at::manual_seed(7);
  const std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"b.weight", at::randn({5, 3})},
      {"a.weight", at::randn({4, 6}).t()},  // non-contiguous source
      {"scalar", at::tensor(3.25f)},
      {"empty", at::zeros({0, 3})},
      {"norm", at::randn({7}).to(at::kDouble)},  // converted on write
  };
  save_safetensors(path, tensors, dtype);

  std::ifstream in(path, std::ios::binary);
  uint64_t header_length = 0;
  in.read(reinterpret_cast<char*>(&header_length), sizeof(header_length));
  EXPECT_EQ(header_length % 8, 0u);

  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("format"), "pt");
  EXPECT_EQ(file.names(),
            (std::vector<std::string>{"b.weight", "a.weight", "scalar", "empty", "norm"}));
  const double tolerance = dtype == c10::kFloat ? 1e-7 : dtype == c10::kHalf ? 1e-3 : 8e-3;
  for (const auto& [name, original] : tensors) {
    SCOPED_TRACE(name);
    const SafetensorsEntry& entry = file.entry(name);
    EXPECT_EQ(entry.dtype, safetensors_dtype_name(dtype));
    EXPECT_EQ(entry.shape, original.sizes().vec());
    EXPECT_EQ(entry.nbytes(), static_cast<uint64_t>(safetensors_data_bytes(original, dtype)));
    const at::Tensor stored = file.load(name);
    EXPECT_EQ(stored.scalar_type(), dtype);
    const at::Tensor loaded = file.load(name, c10::kFloat);
    EXPECT_EQ(loaded.scalar_type(), c10::kFloat);
    EXPECT_EQ(loaded.sizes(), original.sizes());
    EXPECT_TRUE(at::allclose(loaded, original.to(at::kFloat), tolerance, 1e-6));
    EXPECT_TRUE(at::equal(stored.to(at::kFloat), loaded));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, SafetensorsRoundTrip,
                         ::testing::Values(c10::kFloat, c10::kHalf, c10::kBFloat16));

TEST(SafetensorsTest, LoadedTensorsOutliveTheMapping) {
  ScratchDir dir;
  const fs::path path = dir.path() / "x.safetensors";
  const at::Tensor original = at::arange(12, at::kFloat).reshape({3, 4});
  save_safetensors(path, {{"x", original}}, c10::kFloat);
  at::Tensor same, converted;
  {
    SafetensorsFile file(path);
    same = file.load("x", c10::kFloat);
    converted = file.load("x", c10::kHalf);
  }
  fs::remove(path);
  EXPECT_TRUE(at::equal(same, original));
  EXPECT_TRUE(at::equal(converted.to(at::kFloat), original));
}

TEST(SafetensorsTest, ReadsHandWrittenFileWithUnalignedData) {
  // A foreign writer that does not pad: 8 + 61 bytes puts the data at an odd offset.
  ScratchDir dir;
  const fs::path path = dir.path() / "odd.safetensors";
  const std::string header = R"({"v":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string padded = header + std::string(61 - header.size(), ' ');
  write_raw(path, padded, float_bytes({1.5f, -2.0f}));
  SafetensorsFile file(path);
  EXPECT_EQ(file.data_offset(), 69u);
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_TRUE(at::equal(file.load("v"), at::tensor({1.5f, -2.0f})));
  EXPECT_TRUE(at::equal(file.load("v", c10::kBFloat16).to(at::kFloat), at::tensor({1.5f, -2.0f})));
}

TEST(SafetensorsTest, BytesReadCountsOnlyLoadedTensors) {
  ScratchDir dir;
  const fs::path path = dir.path() / "m.safetensors";
  save_safetensors(path, {{"small", at::ones({4})}, {"big", at::ones({100, 100})}}, c10::kHalf);
  SafetensorsFile file(path);
  EXPECT_EQ(file.bytes_read(), 0u);
  file.load("small", c10::kFloat);
  EXPECT_EQ(file.bytes_read(), 8u);
}

TEST(SafetensorsTest, WriterRejectsDuplicatesAndUnsupportedDtypes) {
  ScratchDir dir;
  const fs::path path = dir.path() / "w.safetensors";
  expect_error(
      [&] {
        save_safetensors(path, {{"a", at::ones({2})}, {"a", at::ones({2})}});
      },
      ErrorCode::kInvalidArgument, {"\"a\""});
  expect_error(
      [&] {
        save_safetensors(path, {{"a", at::ones({2})}}, c10::kInt);
      },
      ErrorCode::kInvalidArgument, {"dtype"});
  EXPECT_FALSE(fs::exists(path));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  ScratchDir dir;
  const fs::path path = dir.path() / "absent.safetensors";
  expect_error([&] { SafetensorsFile file(path); }, ErrorCode::kNotFound, {path.string()});
}

TEST(SafetensorsTest, MissingTensorNamesFileAndTensor) {
  ScratchDir dir;
  const fs::path path = dir.path() / "m.safetensors";
  save_safetensors(path, {{"present", at::ones({2})}});
  SafetensorsFile file(path);
  EXPECT_EQ(file.find("absent"), nullptr);
  expect_error([&] { file.load("absent", c10::kFloat); }, ErrorCode::kNotFound,
               {path.string(), "\"absent\""});
}

TEST(SafetensorsTest, TooShortForHeaderLength) {
  ScratchDir dir;
  const fs::path path = dir.path() / "short.safetensors";
  std::ofstream(path, std::ios::binary) << "abc";
  expect_open_fails(path, {"too short"});
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFile) {
  ScratchDir dir;
  const fs::path path = dir.path() / "long.safetensors";
  write_raw(path, R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", float_bytes({1}),
            1000);
  expect_open_fails(path, {"header length 1000", "past the end"});
}

TEST(SafetensorsTest, BadJsonHeader) {
  ScratchDir dir;
  const fs::path path = dir.path() / "json.safetensors";
  write_raw(path, R"({"x":{"dtype":"F32","shape":[1],)", float_bytes({1}));
  expect_open_fails(path, {"header: invalid JSON"});
  write_raw(path, "[1, 2, 3]", "");
  expect_open_fails(path, {"not a JSON object"});
}

TEST(SafetensorsTest, UnknownDtypeFailsOnOpen) {
  ScratchDir dir;
  const fs::path path = dir.path() / "dtype.safetensors";
  write_raw(path, R"({"w":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}})", float_bytes({1}));
  expect_open_fails(path, {"tensor \"w\"", "unknown dtype \"Q7\""});
}

TEST(SafetensorsTest, UnsupportedDtypeFailsOnLoadOnly) {
  ScratchDir dir;
  const fs::path path = dir.path() / "int8.safetensors";
  write_raw(path,
            R"({"q":{"dtype":"I8","shape":[4],"data_offsets":[0,4]},)"
            R"("f":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            std::string("\1\2\3\4", 4) + float_bytes({2.5f}));
  SafetensorsFile file(path);  // a valid file: other tensors remain loadable
  EXPECT_FALSE(file.entry("q").loadable());
  EXPECT_TRUE(at::equal(file.load("f"), at::tensor({2.5f})));
  expect_error([&] { file.load("q", c10::kFloat); }, ErrorCode::kDataLoss,
               {path.string(), "tensor \"q\"", "unsupported dtype \"I8\""});
}

TEST(SafetensorsTest, NegativeOrMalformedShape) {
  ScratchDir dir;
  const fs::path path = dir.path() / "shape.safetensors";
  write_raw(path, R"({"s":{"dtype":"F32","shape":[-1, 2],"data_offsets":[0,4]}})",
            float_bytes({1}));
  expect_open_fails(path, {"tensor \"s\"", "negative dimension -1"});
  write_raw(path, R"({"s":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", float_bytes({1}));
  expect_open_fails(path, {"tensor \"s\"", "shape"});
  write_raw(path, R"({"s":{"dtype":"F32","data_offsets":[0,4]}})", float_bytes({1}));
  expect_open_fails(path, {"tensor \"s\"", "missing shape"});
}

TEST(SafetensorsTest, OffsetsOutOfBounds) {
  ScratchDir dir;
  const fs::path path = dir.path() / "bounds.safetensors";
  write_raw(path, R"({"o":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})",
            float_bytes({1, 2, 3, 4}));
  expect_open_fails(path, {"tensor \"o\"", "past the end of the data buffer"});
  write_raw(path, R"({"o":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", float_bytes({1, 2}));
  expect_open_fails(path, {"tensor \"o\"", "end before begin"});
  write_raw(path, R"({"o":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", float_bytes({1}));
  expect_open_fails(path, {"tensor \"o\"", "data_offsets"});
}

TEST(SafetensorsTest, SizeMismatch) {
  ScratchDir dir;
  const fs::path path = dir.path() / "size.safetensors";
  write_raw(path, R"({"m":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
            float_bytes({1, 2, 3, 4}));
  expect_open_fails(path, {"tensor \"m\"", "12 bytes", "[2, 2]", "needs 16"});
}

TEST(SafetensorsTest, OverlappingTensors) {
  ScratchDir dir;
  const fs::path path = dir.path() / "overlap.safetensors";
  write_raw(path,
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            float_bytes({1, 2, 3}));
  expect_open_fails(path, {"tensor \"b\"", "overlap", "\"a\""});
}

TEST(SafetensorsTest, BadMetadata) {
  ScratchDir dir;
  const fs::path path = dir.path() / "meta.safetensors";
  write_raw(path, R"({"__metadata__":{"format":1}})", "");
  expect_open_fails(path, {"__metadata__", "format"});
}

TEST(SafetensorsTest, TruncatedFileNamesTheCutTensor) {
  ScratchDir dir;
  const fs::path path = dir.path() / "cut.safetensors";
  save_safetensors(path, {{"first", at::ones({8})}, {"last", at::ones({8})}});
  { SafetensorsFile intact(path); }
  fs::resize_file(path, fs::file_size(path) - 4);
  expect_open_fails(path, {"tensor \"last\"", "truncated"});
  // Cut inside the header: the header length now runs past the end.
  fs::resize_file(path, 20);
  expect_open_fails(path, {"header length"});
}

TEST(SafetensorsTest, DeeplyNestedShapeIsRefusedNotACrash) {
  ScratchDir dir;
  const fs::path path = dir.path() / "deep.safetensors";
  // 200000 levels: a recursive dump() of it in an error message would overflow the stack.
  const std::string shape = std::string(200000, '[') + std::string(200000, ']');
  write_raw(path, R"({"x":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,4]}})",
            float_bytes({1}));
  expect_error([&] { SafetensorsFile file(path); }, ErrorCode::kInvalidArgument,
               {path.string(), "64 levels"});
}

TEST(SafetensorsTest, ShapeErrorsShowABoundedExcerpt) {
  ScratchDir dir;
  const fs::path path = dir.path() / "nested.safetensors";
  write_raw(path, R"({"x":{"dtype":"F32","shape":[[1,2],[3]],"data_offsets":[0,4]}})",
            float_bytes({1}));
  expect_open_fails(path, {"tensor \"x\"", "shape [[... 2 items], [... 1 items]]"});
}

TEST(SafetensorsTest, EmptyShapeWithDimensionsNoStrideCanHoldIsRefused) {
  ScratchDir dir;
  const fs::path path = dir.path() / "extent.safetensors";
  // No elements and no bytes, yet the strides of such a tensor overflow int64.
  write_raw(path,
            R"({"x":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})",
            "");
  expect_open_fails(path, {"tensor \"x\"", "overflows"});
  // The element count itself overflowing uint64.
  write_raw(path,
            R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,4]}})",
            float_bytes({1}));
  expect_open_fails(path, {"tensor \"x\"", "overflows"});
}

TEST(SafetensorsTest, FileTruncatedAfterOpenIsDataLossNotSigbus) {
  ScratchDir dir;
  const fs::path path = dir.path() / "shrinking.safetensors";
  save_safetensors(path, {{"head", at::ones({4})}, {"tail", at::ones({4096})}}, c10::kHalf);
  SafetensorsFile file(path);
  // Another process truncates the file between the header parse and the tensor reads.
  fs::resize_file(path, file.data_offset() + 8 + 100);
  EXPECT_TRUE(at::equal(file.load("head"), at::ones({4}, at::kHalf)));
  for (const c10::ScalarType dtype : {c10::kHalf, c10::kFloat}) {  // a plain and a converting read
    SCOPED_TRACE(c10::toString(dtype));
    expect_error([&] { file.load("tail", dtype); }, ErrorCode::kDataLoss,
                 {path.string(), "tensor \"tail\"", "truncated"});
  }
  // Cut to nothing at all: the same error, not a signal.
  fs::resize_file(path, 0);
  expect_error([&] { file.load("head", c10::kFloat); }, ErrorCode::kDataLoss,
               {path.string(), "tensor \"head\""});
}

TEST(SafetensorsTest, ConvertingLoadSpanningSeveralReadChunksIsExact) {
  ScratchDir dir;
  const fs::path path = dir.path() / "big.safetensors";
  // Just over one read chunk of F16 elements, so the bounce buffer is refilled mid-tensor.
  const int64_t count = static_cast<int64_t>(SafetensorsFile::kReadChunkBytes / 2) + 1000;
  const at::Tensor values = (at::arange(count, at::kInt) % 2048).to(at::kHalf);
  save_safetensors(path, {{"v", values}}, c10::kHalf);
  SafetensorsFile file(path);
  const at::Tensor loaded = file.load("v", c10::kFloat);
  EXPECT_TRUE(at::equal(loaded, values.to(at::kFloat)));
  EXPECT_EQ(file.bytes_read(), static_cast<uint64_t>(count * 2));
}

}  // namespace
}  // namespace helios::model
