// Python bindings for csrc/interp_pos_embed.cu.
#include "bind_common.h"
#include "interp_pos_embed.h"
#include "registry.h"

namespace adaptkern {
namespace {

void register_interp_pos_embed(pybind11::module_& m) {
  m.def(
      "interp_pos_embed_forward",
      [](std::uintptr_t pos, int pos_dtype, std::uintptr_t tokens, std::uintptr_t out, int out_dtype,
         std::uintptr_t grid_sizes, std::uintptr_t cu_seqlens, int64_t num_seqs, int64_t total_rows, int64_t base_h,
         int64_t base_w, int64_t dim, int64_t num_prefix, bool bicubic, bool antialias, bool align_corners,
         std::uintptr_t stream) {
        throw_on_error(interp_pos_embed_forward(as_ptr<const void>(pos), pos_dtype, as_ptr<const void>(tokens),
                                                as_ptr<void>(out), out_dtype, as_ptr<const int32_t>(grid_sizes),
                                                as_ptr<const int32_t>(cu_seqlens), num_seqs, total_rows, base_h,
                                                base_w, dim, num_prefix, InterpOptions{bicubic, antialias, align_corners},
                                                as_stream(stream)),
                       "adaptkern._C.interp_pos_embed_forward");
      },
      pybind11::arg("pos"), pybind11::arg("pos_dtype"), pybind11::arg("tokens"), pybind11::arg("out"),
      pybind11::arg("out_dtype"), pybind11::arg("grid_sizes"), pybind11::arg("cu_seqlens"), pybind11::arg("num_seqs"),
      pybind11::arg("total_rows"), pybind11::arg("base_h"), pybind11::arg("base_w"), pybind11::arg("dim"),
      pybind11::arg("num_prefix"), pybind11::arg("bicubic"), pybind11::arg("antialias"),
      pybind11::arg("align_corners"), pybind11::arg("stream"),
      "Resample the (base_h, base_w, dim) grid to every sequence's grid into out (plus tokens unless 0). "
      "dtype codes: 0 float32, 1 float16, 2 bfloat16.");
  m.def(
      "interp_pos_embed_backward",
      [](std::uintptr_t grad, int grad_dtype, std::uintptr_t grad_pos, std::uintptr_t grid_sizes,
         std::uintptr_t cu_seqlens, int64_t num_seqs, int64_t base_h, int64_t base_w, int64_t dim, int64_t num_prefix,
         bool bicubic, bool antialias, bool align_corners, std::uintptr_t stream) {
        throw_on_error(interp_pos_embed_backward(as_ptr<const void>(grad), grad_dtype, as_ptr<float>(grad_pos),
                                                 as_ptr<const int32_t>(grid_sizes), as_ptr<const int32_t>(cu_seqlens),
                                                 num_seqs, base_h, base_w, dim, num_prefix,
                                                 InterpOptions{bicubic, antialias, align_corners}, as_stream(stream)),
                       "adaptkern._C.interp_pos_embed_backward");
      },
      pybind11::arg("grad"), pybind11::arg("grad_dtype"), pybind11::arg("grad_pos"), pybind11::arg("grid_sizes"),
      pybind11::arg("cu_seqlens"), pybind11::arg("num_seqs"), pybind11::arg("base_h"), pybind11::arg("base_w"),
      pybind11::arg("dim"), pybind11::arg("num_prefix"), pybind11::arg("bicubic"), pybind11::arg("antialias"),
      pybind11::arg("align_corners"), pybind11::arg("stream"),
      "float32 gradient (base_h, base_w, dim) for the grid from grad (same layout as the forward's out).");
}

const Register kRegisterInterpPosEmbed(&register_interp_pos_embed);

}  // namespace
}  // namespace adaptkern
