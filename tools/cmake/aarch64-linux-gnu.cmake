# Cross-compile orbitfl for 64-bit ARM Linux (Pi 4/5, Jetson, most smallsat OBCs) with Debian's
# g++-aarch64-linux-gnu, and run what it builds (ctest) under qemu-user.
#
#   cmake -S . -B build/cross/build -DCMAKE_TOOLCHAIN_FILE=tools/cmake/aarch64-linux-gnu.cmake \
#         -DORBITFL_BUILD_TESTS=ON -DORBITFL_BUILD_PYTHON=OFF
#
# tools/cross/aarch64.py drives this file end to end (including the pybind11 module); see
# docs/aarch64.md.

set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(ORBITFL_CROSS_TRIPLE aarch64-linux-gnu CACHE STRING "GNU triple of the cross toolchain")
set(CMAKE_C_COMPILER ${ORBITFL_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${ORBITFL_CROSS_TRIPLE}-g++)

# Debian's cross toolchain keeps the target's libc in /usr/aarch64-linux-gnu; multiarch arm64
# packages (libpython3.11-dev:arm64) land in /usr/lib/aarch64-linux-gnu and
# /usr/include/aarch64-linux-gnu, which the cross compiler already searches.
set(ORBITFL_CROSS_SYSROOT /usr/${ORBITFL_CROSS_TRIPLE} CACHE PATH "target libc root (qemu -L)")
set(CMAKE_FIND_ROOT_PATH ${ORBITFL_CROSS_SYSROOT})
# Programs (cmake helpers, the build machine's python for pybind11's config) come from the host;
# libraries and headers only from the target.
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# pybind11's CMake config lives in the host's Python environment, not in the target root.
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# The baseline ARMv8-A target (NEON is part of it): the build runs on every aarch64 board.
# Never let qemu pick its default CPU ("max"): it enables extensions no board has, and code that
# probes them at run time then takes paths a real board never takes (DESIGN §6: wrong LiteRT int8
# results). cortex-a72 is the Raspberry Pi 4's core.
set(ORBITFL_QEMU_CPU cortex-a72 CACHE STRING "CPU model qemu-aarch64 emulates (-cpu)")
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -cpu ${ORBITFL_QEMU_CPU} -L ${ORBITFL_CROSS_SYSROOT})
