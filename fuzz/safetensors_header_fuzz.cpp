// A safetensors file (header length, header JSON, data) through SafetensorsFile, every loadable
// tensor read in its stored dtype and as F32; and the same bytes as a
// model.safetensors.index.json through parse_weight_map. helios::Error is an expected
// rejection; any other exception or signal is a bug.
#include <ATen/Parallel.h>

#include "fuzz_support.h"
#include "helios/common/error.h"
#include "helios/model/checkpoint.h"
#include "helios/model/safetensors.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes = helios::fuzz::as_text(data, size);
  try {
    helios::model::parse_weight_map(bytes, "model.safetensors.index.json");
  } catch (const helios::Error&) {
  }

  const auto& path = helios::fuzz::scratch_file(".safetensors");
  helios::fuzz::write_scratch(path, bytes);
  try {
    const helios::model::SafetensorsFile file(path);
    for (const std::string& name : file.names()) {
      const helios::model::SafetensorsEntry& entry = file.entry(name);
      HELIOS_FUZZ_CHECK(entry.end <= file.file_size() - file.data_offset());
      if (!entry.loadable()) continue;
      const at::Tensor stored = file.load(name);
      HELIOS_FUZZ_CHECK(stored.nbytes() == entry.nbytes());
      const at::Tensor converted = file.load(name, c10::kFloat);
      HELIOS_FUZZ_CHECK(converted.sizes() == stored.sizes());
    }
  } catch (const helios::Error&) {
  }
  return 0;
}
