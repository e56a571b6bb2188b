#pragma once
// A minimal hand-written SVG document for report plots: rectangles, lines and
// text in user units, plus colour scales. Not part of the public API.
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace finmoe::svg {

class Document {
 public:
  Document(double width, double height);
  // `title` becomes a hover tooltip when non-empty.
  void rect(double x, double y, double w, double h, const std::string& fill,
            const std::string& title = "");
  void line(double x1, double y1, double x2, double y2, const std::string& stroke = "#444",
            double width = 1.0);
  // A line through `points` (x, y), e.g. a curve of a plot.
  void polyline(const std::vector<std::pair<double, double>>& points,
                const std::string& stroke = "#1f77b4", double width = 1.5);
  void circle(double cx, double cy, double r, const std::string& fill,
              const std::string& title = "");
  // anchor: start | middle | end; rotate: degrees about (x, y).
  void text(double x, double y, std::string_view s, double size = 11,
            const std::string& anchor = "start", double rotate = 0);
  std::string str() const;  // the whole document

 private:
  double width_, height_;
  std::string body_;
};

// Escapes &, <, >, " for text and attribute values.
std::string escape(std::string_view s);
// Sequential scale for v in [0, 1] (dark blue -> yellow); clamped.
std::string sequential(double v);
// Diverging scale for v in [-1, 1] (blue -> white -> red); clamped.
std::string diverging(double v);
// A number with `digits` significant digits, for labels.
std::string num(double v, int digits = 3);

}  // namespace finmoe::svg
