// Python bindings for csrc/pack.cu.
#include "bind_common.h"
#include "pack.h"
#include "registry.h"

namespace adaptkern {
namespace {

void register_pack(pybind11::module_& m) {
  m.def(
      "pack_rows",
      [](std::uintptr_t padded, std::uintptr_t packed, std::uintptr_t cu_seqlens, int64_t batch,
         int64_t padded_len, int64_t max_seqlen, int64_t row_bytes, std::uintptr_t stream) {
        throw_on_error(pack_rows(as_ptr<const void>(padded), as_ptr<void>(packed),
                                 as_ptr<const int32_t>(cu_seqlens), batch, padded_len, max_seqlen, row_bytes,
                                 as_stream(stream)),
                       "adaptkern._C.pack_rows");
      },
      pybind11::arg("padded"), pybind11::arg("packed"), pybind11::arg("cu_seqlens"), pybind11::arg("batch"),
      pybind11::arg("padded_len"), pybind11::arg("max_seqlen"), pybind11::arg("row_bytes"),
      pybind11::arg("stream"),
      "Copy the first cu_seqlens[b+1]-cu_seqlens[b] rows of each padded sequence into the packed buffer.");
  m.def(
      "unpack_rows",
      [](std::uintptr_t packed, std::uintptr_t padded, std::uintptr_t cu_seqlens, int64_t batch,
         int64_t padded_len, int64_t row_bytes, std::uintptr_t stream) {
        throw_on_error(unpack_rows(as_ptr<const void>(packed), as_ptr<void>(padded),
                                   as_ptr<const int32_t>(cu_seqlens), batch, padded_len, row_bytes,
                                   as_stream(stream)),
                       "adaptkern._C.unpack_rows");
      },
      pybind11::arg("packed"), pybind11::arg("padded"), pybind11::arg("cu_seqlens"), pybind11::arg("batch"),
      pybind11::arg("padded_len"), pybind11::arg("row_bytes"), pybind11::arg("stream"),
      "Scatter packed rows into a zero-padded (batch, padded_len, row) buffer.");
}

const Register kRegisterPack(&register_pack);

}  // namespace
}  // namespace adaptkern
