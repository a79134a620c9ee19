# Cross toolchain: aarch64 Linux from an x86-64 Debian 12 host (scripts/deps-arm64.sh installs
# gcc-aarch64-linux-gnu, qemu-user and the arm64 -dev packages, multiarch).
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
# Tests run under qemu-user (ctest uses CMAKE_CROSSCOMPILING_EMULATOR) with `-cpu max`, which
# emulates NEON, dotprod, i8mm and SVE2, so every aarch64 kernel level is exercised.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(SPK_CROSS_TRIPLE aarch64-linux-gnu)
set(CMAKE_C_COMPILER ${SPK_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${SPK_CROSS_TRIPLE}-g++)

# Headers and libraries of the target: the cross libc's sysroot plus Debian's multiarch paths.
set(CMAKE_FIND_ROOT_PATH /usr/${SPK_CROSS_TRIPLE})
set(CMAKE_LIBRARY_ARCHITECTURE ${SPK_CROSS_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# pkg-config must see only the arm64 .pc files, never the host's.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/${SPK_CROSS_TRIPLE}/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")

# No GPU or RDMA stack for the emulated target.
set(SPK_WITH_CUDA OFF CACHE STRING "" FORCE)
set(SPK_WITH_NCCL OFF CACHE STRING "" FORCE)
set(SPK_WITH_VERBS OFF CACHE STRING "" FORCE)

set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-cpu;max CACHE STRING "run target programs")
