#include "sweep_comm.h"

#include <algorithm>
#include <cstdlib>
#include <thread>

#include "core/error.h"

namespace kvsim::cli {

SweepCommFactory& sweep_comm_factory() {
  static SweepCommFactory f = [] {
    // Started by mpirun without kvsim-mpi: N copies would each run the whole sweep.
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
      if (const char* s = std::getenv(v); s && std::atoi(s) > 1)
        throw Error(std::string("kvsim sweep runs as one process; under mpirun/srun use kvsim-mpi sweep (") + v + "=" +
                    s + ")");
    return make_local_comm();
  };
  return f;
}

std::unique_ptr<SweepComm> make_sweep_comm() { return sweep_comm_factory()(); }

int default_threads_per_rank(const SweepComm& comm) {
  if (comm.size() <= 1) return 0;
  int local = 0;
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE"})
    if (const char* s = std::getenv(v); s && std::atoi(s) > 0) {
      local = std::atoi(s);
      break;
    }
  if (local <= 0) return 0;
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::max(1, cores / local);
}

}  // namespace kvsim::cli
