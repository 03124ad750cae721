# The C++ build's dependencies, each with the Debian 12 package that provides it, so a missing one
# stops the configure step (and `pip install .`) with one line naming what to apt-get install.
# tools/install-deps.sh installs the same packages.
function(kvsim_missing what package)
  message(FATAL_ERROR "kvsim: ${what} not found: apt-get install ${package} "
                      "(tools/install-deps.sh installs every build dependency)")
endfunction()

find_package(OpenMP QUIET)
if(NOT OpenMP_CXX_FOUND)
  kvsim_missing("OpenMP" "g++")
endif()
find_package(HDF5 QUIET COMPONENTS C)
if(NOT HDF5_FOUND)
  kvsim_missing("HDF5" "libhdf5-dev")
endif()
find_package(Boost QUIET COMPONENTS program_options)
if(NOT Boost_FOUND)
  kvsim_missing("Boost.Program_options" "libboost-program-options-dev")
endif()
find_package(nlohmann_json 3 QUIET)
if(NOT nlohmann_json_FOUND)
  kvsim_missing("nlohmann_json" "nlohmann-json3-dev")
endif()
find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
  kvsim_missing("pkg-config" "pkg-config")
endif()
# The OpenMP variant of OpenBLAS (libopenblas-openmp-dev), so BLAS threads and ours share one pool.
pkg_check_modules(OPENBLAS QUIET IMPORTED_TARGET openblas)
if(NOT OPENBLAS_FOUND)
  kvsim_missing("OpenBLAS" "libopenblas-openmp-dev")
endif()
