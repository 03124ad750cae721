// kvsim-mpi: the kvsim commands, with `sweep` spread over MPI ranks (mpirun -n N kvsim-mpi
// sweep ..., or srun). Other commands run on every rank as they would alone, so use it for sweep.
// A failing rank aborts the job (MPI_Abort) rather than leaving the others waiting forever;
// finished units are on disk and --resume continues. A rank whose launcher dies (mpirun killed
// with SIGKILL) gets SIGTERM and ends, removing its partial files, instead of running on as an
// orphan beside a --resume of the same sweep.
#include <mpi.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>

#include <exception>
#include <iostream>

#include "command.h"
#include "core/blas_kernels.h"
#include "core/output_path.h"
#include "mpi_comm.h"
#include "sweep_comm.h"

int main(int argc, char** argv) {
  kvsim::use_cpu_blas_kernels(argv);  // may re-execute once, before MPI_Init
  const pid_t launcher = getppid();
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (getppid() != launcher) std::raise(SIGTERM);  // the launcher died before prctl took effect
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);  // OpenMP threads, MPI from one
  using namespace kvsim::cli;
  sweep_comm_factory() = [] { return std::make_unique<MpiComm>(); };
  kvsim::install_partial_file_cleanup();  // SIGINT/SIGTERM leave no .partial behind
  int code = 2;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    print_usage(std::cout);
    code = argc < 2 ? 2 : 0;
  } else {
    try {
      code = run_command(std::vector<std::string>(argv + 1, argv + argc), std::cerr);
    } catch (const std::exception& e) {
      std::cerr << "kvsim-mpi " << argv[1] << ": internal error: " << e.what() << "\n";
      code = 3;
    }
  }
  if (code != 0 && code != 1) MPI_Abort(MPI_COMM_WORLD, code);  // usage or internal error on a rank
  MPI_Finalize();
  return code;
}
