// Placeholder: filled in by the kernel work of issue 2.
#include "common.hpp"
