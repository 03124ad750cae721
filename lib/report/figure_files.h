#pragma once
// Figure files for papers: the SVG kvsim draws, and PNG (300 dpi) or PDF (vector) made from that
// same SVG by librsvg's rsvg-convert (Debian package librsvg2-bin, installed by
// tools/install-deps.sh), so every format shows exactly what the report page shows.
#include <string>

namespace kvsim::report {

// Path of rsvg-convert on PATH, or "" when it is not installed.
std::string svg_converter();

// Renders the SVG file at svg_path into out_path as `format` ("png" or "pdf"), written to a
// partial file and renamed (no half-written figure survives a failure or a signal). Throws
// kvsim::Error naming out_path with rsvg-convert's first line of complaint when it fails.
void convert_svg(const std::string& converter, const std::string& svg_path, const std::string& out_path,
                 const std::string& format);

}  // namespace kvsim::report
