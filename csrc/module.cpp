// adaptkern._C: CUDA kernels behind a torch-free pybind11 interface. Every function takes
// raw device addresses (tensor.data_ptr()) and a stream handle (stream.cuda_stream).
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include "registry.h"

namespace adaptkern {

std::vector<Registrar>& registrars() {
  static std::vector<Registrar> all;
  return all;
}

}  // namespace adaptkern

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "adaptkern CUDA kernels (raw pointers + stream handles, no torch headers)";
  m.def("cuda_runtime_version", []() { return CUDART_VERSION; },
        "CUDA runtime version the extension was compiled against (e.g. 13000).");
  m.def("device_count", []() {
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
  }, "CUDA devices visible to the extension's runtime (0 when there is no driver).");
  for (auto fn : adaptkern::registrars()) fn(m);
}
