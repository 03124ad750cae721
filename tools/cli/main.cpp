// kvsim: dispatches to the registered subcommands (command.cpp); every kvsim::Error becomes one
// line on stderr and exit code 1 (2 for usage errors).
#include <exception>
#include <iostream>

#include "command.h"
#include "core/blas_kernels.h"
#include "core/output_path.h"

int main(int argc, char** argv) {
  kvsim::use_cpu_blas_kernels(argv);  // may re-execute once, before anything else runs
  using namespace kvsim::cli;
  kvsim::install_partial_file_cleanup();  // SIGINT/SIGTERM leave no .partial behind
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage(std::cout);
    return argc < 2 ? 2 : 0;
  }
  if (std::string(argv[1]) == "--version") {
    const kvsim::BlasInfo b = kvsim::blas_info();
    std::cout << "kvsim " << KVSIM_VERSION << "\nBLAS: " << b.config << "; core " << b.core << " (chosen by "
              << b.chosen_by << (b.corrected_from.empty() ? "" : ", OpenBLAS had picked " + b.corrected_from)
              << "), " << b.threading << " threading\n";
    return 0;
  }
  try {
    return run_command(std::vector<std::string>(argv + 1, argv + argc), std::cerr);
  } catch (const std::exception& e) {
    std::cerr << "kvsim " << argv[1] << ": internal error: " << e.what() << "\n";
    return 3;
  }
}
