// Python bindings for csrc/patch_embed.cu.
#include "bind_common.h"
#include "patch_embed.h"
#include "registry.h"

namespace adaptkern {
namespace {

void register_patch_embed(pybind11::module_& m) {
  m.def(
      "patchify",
      [](std::uintptr_t table, int64_t num_images, int64_t max_tokens, int64_t channels, int64_t patch_h,
         int64_t patch_w, std::uintptr_t patches, int64_t element_bytes, std::uintptr_t stream) {
        throw_on_error(patchify(as_ptr<const int64_t>(table), num_images, max_tokens, channels, patch_h, patch_w,
                                as_ptr<void>(patches), element_bytes, as_stream(stream)),
                       "adaptkern._C.patchify");
      },
      pybind11::arg("table"), pybind11::arg("num_images"), pybind11::arg("max_tokens"), pybind11::arg("channels"),
      pybind11::arg("patch_h"), pybind11::arg("patch_w"), pybind11::arg("patches"), pybind11::arg("element_bytes"),
      pybind11::arg("stream"),
      "Gather the patches of every image of the int64 (num_images, 8) table into a (tokens, C*ph*pw) matrix.");
  m.def(
      "unpatchify",
      [](std::uintptr_t table, int64_t num_images, int64_t max_tokens, int64_t channels, int64_t patch_h,
         int64_t patch_w, std::uintptr_t patches, int64_t element_bytes, std::uintptr_t stream) {
        throw_on_error(unpatchify(as_ptr<const int64_t>(table), num_images, max_tokens, channels, patch_h, patch_w,
                                  as_ptr<const void>(patches), element_bytes, as_stream(stream)),
                       "adaptkern._C.unpatchify");
      },
      pybind11::arg("table"), pybind11::arg("num_images"), pybind11::arg("max_tokens"), pybind11::arg("channels"),
      pybind11::arg("patch_h"), pybind11::arg("patch_w"), pybind11::arg("patches"), pybind11::arg("element_bytes"),
      pybind11::arg("stream"),
      "Scatter a (tokens, C*ph*pw) patch matrix back into the images of the table (inverse of patchify).");
}

const Register kRegisterPatchEmbed(&register_patch_embed);

}  // namespace
}  // namespace adaptkern
