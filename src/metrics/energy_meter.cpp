#include "helios/metrics/energy_meter.h"

#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <ctime>
#include <functional>
#include <mutex>
#include <string_view>
#include <utility>

#include "helios/common/error.h"

namespace helios::metrics {
namespace {

// Both sources are cumulative counters from some origin of their own (process start, driver
// load); a meter reports the growth since it was created.
class CumulativeMeter final : public EnergyMeter {
 public:
  CumulativeMeter(std::string source, std::function<double()> read_joules)
      : source_(std::move(source)), read_(std::move(read_joules)), origin_(read_()) {}

  const std::string& source() const override { return source_; }

  double joules() override {
    std::lock_guard lock(mutex_);
    // The max keeps the promise that the figure never decreases even if the counter does (a
    // GPU reset restarts NVML's count); Prometheus would read a drop as a counter reset.
    last_ = std::max(last_, read_() - origin_);
    return last_;
  }

 private:
  const std::string source_;
  const std::function<double()> read_;
  const double origin_;
  std::mutex mutex_;
  double last_ = 0.0;
};

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// An estimate, not a measurement: every CPU second of this process (all its threads, user and
// system time) is charged `watts_per_core` joules; idle power, memory and the rest of the
// machine are not seen.
std::unique_ptr<EnergyMeter> cpu_estimate_meter(double watts_per_core) {
  return std::make_unique<CumulativeMeter>(
      "cpu_estimate", [watts_per_core] { return process_cpu_seconds() * watts_per_core; });
}

constexpr std::string_view kNvmlUnavailable = "energy.source: nvml cannot be used: ";

[[noreturn]] void nvml_unavailable(const std::string& why) {
  throw Error(ErrorCode::kFailedPrecondition, std::string(kNvmlUnavailable) + why);
}

// The few NVML entry points helios uses, declared here so that building needs no nvml.h and
// running needs no libnvidia-ml: the library is opened with dlopen, on demand.
using NvmlReturn = int;                       // nvmlReturn_t; 0 is NVML_SUCCESS
using NvmlDevice = struct NvmlDeviceOpaque*;  // nvmlDevice_t
constexpr NvmlReturn kNvmlSuccess = 0;

class Nvml {
 public:
  // Loads the library and initialises NVML, or throws the reason (see nvml_unavailable).
  static std::shared_ptr<Nvml> open() {
    void* handle = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      nvml_unavailable(std::string("libnvidia-ml.so.1 not found (") +
                       (why ? why : "dlopen failed") + ")");
    }
    std::shared_ptr<Nvml> nvml(new Nvml(handle));
    nvml->resolve(nvml->init_, "nvmlInit_v2");
    nvml->resolve(nvml->shutdown_, "nvmlShutdown");
    nvml->resolve(nvml->error_string_, "nvmlErrorString");
    nvml->resolve(nvml->handle_by_index_, "nvmlDeviceGetHandleByIndex_v2");
    nvml->resolve(nvml->total_energy_, "nvmlDeviceGetTotalEnergyConsumption");
    if (const NvmlReturn r = nvml->init_(); r != kNvmlSuccess) {
      nvml_unavailable("nvmlInit failed: " + nvml->error(r));
    }
    nvml->initialized_ = true;
    return nvml;
  }

  ~Nvml() {
    if (initialized_) shutdown_();
    dlclose(handle_);
  }
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  NvmlDevice device(int index) const {
    NvmlDevice device = nullptr;
    if (const NvmlReturn r = handle_by_index_(static_cast<unsigned>(index), &device);
        r != kNvmlSuccess) {
      nvml_unavailable("no NVML device " + std::to_string(index) + ": " + error(r));
    }
    return device;
  }

  // Millijoules the device has drawn since the driver loaded, or the NVML error.
  NvmlReturn total_energy(NvmlDevice device, unsigned long long& millijoules) const {
    return total_energy_(device, &millijoules);
  }

  std::string error(NvmlReturn r) const {
    const char* text = error_string_ ? error_string_(r) : nullptr;
    return text ? std::string(text) : "NVML error " + std::to_string(r);
  }

 private:
  explicit Nvml(void* handle) : handle_(handle) {}

  template <typename Function>
  void resolve(Function*& out, const char* name) {
    out = reinterpret_cast<Function*>(dlsym(handle_, name));
    if (out == nullptr) nvml_unavailable(std::string("libnvidia-ml.so.1 lacks ") + name);
  }

  void* handle_;
  bool initialized_ = false;
  NvmlReturn (*init_)() = nullptr;
  NvmlReturn (*shutdown_)() = nullptr;
  const char* (*error_string_)(NvmlReturn) = nullptr;
  NvmlReturn (*handle_by_index_)(unsigned, NvmlDevice*) = nullptr;
  NvmlReturn (*total_energy_)(NvmlDevice, unsigned long long*) = nullptr;
};

// Measured, but for the whole GPU: NVML's counter includes every process on the device and its
// idle draw, not only helios' share. Throws the reason when NVML cannot serve.
std::unique_ptr<EnergyMeter> nvml_meter(int gpu_index) {
  if (gpu_index < 0) nvml_unavailable("helios does not serve on a GPU (model.device is cpu)");
  std::shared_ptr<Nvml> nvml = Nvml::open();
  const NvmlDevice device = nvml->device(gpu_index);
  unsigned long long millijoules = 0;
  if (const NvmlReturn r = nvml->total_energy(device, millijoules); r != kNvmlSuccess) {
    nvml_unavailable("GPU " + std::to_string(gpu_index) +
                     " does not report its total energy consumption (" + nvml->error(r) + ")");
  }
  // A failed read later repeats the last good one rather than stopping the daemon.
  auto last = std::make_shared<unsigned long long>(millijoules);
  return std::make_unique<CumulativeMeter>("nvml", [nvml, device, last] {
    unsigned long long now = 0;
    if (nvml->total_energy(device, now) == kNvmlSuccess) *last = now;
    return static_cast<double>(*last) / 1000.0;
  });
}

}  // namespace

std::unique_ptr<EnergyMeter> make_energy_meter(const EnergyMeterOptions& options) {
  const std::string& source = options.source;
  if (source != "auto" && source != "nvml" && source != "cpu_estimate") {
    throw Error(ErrorCode::kInvalidArgument,
                "energy.source: must be one of auto, cpu_estimate, nvml, got \"" + source + "\"");
  }
  std::string why_not_nvml;
  if (source == "cpu_estimate") {
    why_not_nvml = "energy.source is cpu_estimate";
  } else if (source == "auto" && options.gpu_index < 0) {
    why_not_nvml = "helios does not serve on a GPU";
  } else {
    try {
      std::unique_ptr<EnergyMeter> meter = nvml_meter(options.gpu_index);
      spdlog::info("energy: measured by NVML on GPU {} (the whole GPU's counter)",
                   options.gpu_index);
      return meter;
    } catch (const Error& e) {
      if (source == "nvml") throw;
      why_not_nvml =
          "NVML cannot be used: " + std::string(e.what()).substr(kNvmlUnavailable.size());
    }
  }
  spdlog::info("energy: estimated as process CPU time x {} W per core ({})",
               options.cpu_watts_per_core, why_not_nvml);
  return cpu_estimate_meter(options.cpu_watts_per_core);
}

}  // namespace helios::metrics
