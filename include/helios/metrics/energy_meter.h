#pragma once

#include <memory>
#include <string>

namespace helios::metrics {

// Energy consumed while helios serves, from the best source the machine has. The daemon exports
// it (helios_energy_joules_total) and the controller divides it by the tokens a candidate
// generated to fill the energy column of its profile rows, so both see the same figures.
class EnergyMeter {
 public:
  virtual ~EnergyMeter() = default;
  // "nvml" (measured: the GPU's total energy counter) or "cpu_estimate" (process CPU time x
  // watts per core).
  virtual const std::string& source() const = 0;
  // Joules consumed since the meter was created. Thread-safe, never decreases.
  virtual double joules() = 0;
};

struct EnergyMeterOptions {
  std::string source = "auto";  // "auto" | "nvml" | "cpu_estimate"
  double cpu_watts_per_core = 10.0;
  // The CUDA device helios serves on; -1 = not on a GPU. Taken as NVML's device index, which
  // is the same device when every GPU is visible in PCI order (CUDA_VISIBLE_DEVICES or
  // CUDA_DEVICE_ORDER can make them differ).
  int gpu_index = -1;
};

// "auto": NVML when gpu_index >= 0 and NVML loads and reports energy for that device, else the
// CPU estimate; which one and why is logged at info. "nvml" when NVML cannot be used ->
// Error(kFailedPrecondition) whose message starts with "energy.source: " and says why.
// "cpu_estimate" always works. Any other source -> Error(kInvalidArgument).
//
// NVML is opened at run time, so helios starts on machines without an NVIDIA driver. Its
// counter covers the whole GPU, other processes on it included. The CPU estimate is an
// estimate: CPU seconds of this process x cpu_watts_per_core, blind to idle power, memory and
// everything else the machine draws.
std::unique_ptr<EnergyMeter> make_energy_meter(const EnergyMeterOptions& options);

}  // namespace helios::metrics
