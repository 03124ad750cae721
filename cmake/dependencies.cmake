# The C++ build's dependencies, each with the Debian 12 package that provides it, so a missing one
# stops the configure step (and `pip install .`) with one line naming what to apt-get install.
# tools/install-deps.sh installs the same packages.
function(kvsim_missing what package)
  message(FATAL_ERROR "kvsim: ${what} not found: apt-get install ${package} "
                      "(tools/install-deps.sh installs every build dependency)")
endfunction()

# kvsim_require(FOUND_VAR DEBIAN_PACKAGE find_package arguments...)
macro(kvsim_require found_var package)
  find_package(${ARGN} QUIET)
  if(NOT ${found_var})
    kvsim_missing("${ARGV2}" "${package}")
  endif()
endmacro()

kvsim_require(OpenMP_CXX_FOUND g++ OpenMP)
kvsim_require(HDF5_FOUND libhdf5-dev HDF5 COMPONENTS C)
kvsim_require(Boost_FOUND libboost-program-options-dev Boost COMPONENTS program_options)
kvsim_require(nlohmann_json_FOUND nlohmann-json3-dev nlohmann_json 3)
kvsim_require(toml11_FOUND libtoml11-dev toml11)  # kvsim sweep --config study.toml
kvsim_require(PKG_CONFIG_FOUND pkg-config PkgConfig)
# The OpenMP variant of OpenBLAS (libopenblas-openmp-dev), so BLAS threads and ours share one pool.
pkg_check_modules(OPENBLAS QUIET IMPORTED_TARGET openblas)
if(NOT OPENBLAS_FOUND)
  kvsim_missing("OpenBLAS" "libopenblas-openmp-dev")
endif()
