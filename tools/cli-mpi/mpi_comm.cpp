#include "mpi_comm.h"

#include <vector>

namespace kvsim::cli {

MpiComm::MpiComm() {
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  const MPI_Aint bytes = rank_ == 0 ? static_cast<MPI_Aint>(sizeof(long long)) : 0;
  MPI_Win_allocate(bytes, sizeof(long long), MPI_INFO_NULL, MPI_COMM_WORLD, &counter_, &win_);
  if (rank_ == 0) {
    MPI_Win_lock(MPI_LOCK_EXCLUSIVE, 0, 0, win_);
    *counter_ = 0;
    MPI_Win_unlock(0, win_);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

MpiComm::~MpiComm() {
  if (win_ != MPI_WIN_NULL) MPI_Win_free(&win_);
}

long long MpiComm::next_unit() {
  const long long one = 1;
  long long got = 0;
  MPI_Win_lock(MPI_LOCK_SHARED, 0, 0, win_);
  MPI_Fetch_and_op(&one, &got, MPI_LONG_LONG, 0, 0, MPI_SUM, win_);
  MPI_Win_unlock(0, win_);
  return got;
}

void MpiComm::barrier() { MPI_Barrier(MPI_COMM_WORLD); }

void MpiComm::broadcast(std::string& text) {
  long long n = static_cast<long long>(text.size());
  MPI_Bcast(&n, 1, MPI_LONG_LONG, 0, MPI_COMM_WORLD);
  text.resize(static_cast<std::size_t>(n));
  MPI_Bcast(text.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD);
}

std::vector<std::string> MpiComm::gather(const std::string& text) {
  int n = static_cast<int>(text.size());
  std::vector<int> sizes(static_cast<std::size_t>(rank_ == 0 ? size_ : 0));
  MPI_Gather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  std::vector<int> offsets(sizes.size());
  int total = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    offsets[i] = total;
    total += sizes[i];
  }
  std::string all(static_cast<std::size_t>(total), '\0');
  MPI_Gatherv(text.data(), n, MPI_CHAR, all.data(), sizes.data(), offsets.data(), MPI_CHAR, 0, MPI_COMM_WORLD);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < sizes.size(); ++i) out.push_back(all.substr(offsets[i], sizes[i]));
  return out;
}

std::string MpiComm::host() const {
  char name[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  MPI_Get_processor_name(name, &len);
  return std::string(name, len);
}

}  // namespace kvsim::cli
