// Each binding file registers its functions here at static-initialization time, so adding
// an op to the extension means adding files, never editing module.cpp.
#pragma once

#include <pybind11/pybind11.h>

#include <vector>

namespace adaptkern {

using Registrar = void (*)(pybind11::module_&);

std::vector<Registrar>& registrars();

struct Register {
  explicit Register(Registrar fn) { registrars().push_back(fn); }
};

}  // namespace adaptkern
