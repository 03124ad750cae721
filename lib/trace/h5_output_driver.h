#pragma once
// A POSIX HDF5 file driver for output files that never reports an I/O error to HDF5 and records
// it instead. With HDF5's own sec2 driver a failed write (disk full, file size limit) leaves the
// file identifier half-closed: H5Fclose fails, the identifier stays registered and HDF5's atexit
// teardown flushes it again and crashes (SIGSEGV in H5F__close_cb). Here HDF5 always sees success,
// so every close releases its identifiers, and the writer checks the status after each write
// and at close and reports the first error itself (the file is then discarded).
#include <hdf5.h>

#include <string>

namespace kvsim::h5 {

struct OutputStatus {
  int error = 0;            // errno of the first failed write/truncate/close; 0 while all went well
  std::string operation;    // "write", "truncate" or "close"
  bool ok() const { return error == 0; }
  // "write failed: No space left on device (disk full?)"
  std::string message() const;
};

// A file access property list that writes through the fail-soft driver, recording into `status`
// (which must outlive every file created with it). Call with library_mutex() held.
hid_t output_file_access(OutputStatus* status);

}  // namespace kvsim::h5
