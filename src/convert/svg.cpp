#include "convert/svg.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>

namespace finmoe::svg {

Document::Document(double width, double height) : width_(width), height_(height) {}

void Document::rect(double x, double y, double w, double h, const std::string& fill,
                    const std::string& title) {
  body_ += "<rect x=\"" + num(x, 6) + "\" y=\"" + num(y, 6) + "\" width=\"" + num(w, 6) +
           "\" height=\"" + num(h, 6) + "\" fill=\"" + fill + "\"";
  if (title.empty()) {
    body_ += "/>\n";
  } else {
    body_ += "><title>" + escape(title) + "</title></rect>\n";
  }
}

void Document::line(double x1, double y1, double x2, double y2, const std::string& stroke,
                    double width) {
  body_ += "<line x1=\"" + num(x1, 6) + "\" y1=\"" + num(y1, 6) + "\" x2=\"" + num(x2, 6) +
           "\" y2=\"" + num(y2, 6) + "\" stroke=\"" + stroke + "\" stroke-width=\"" +
           num(width, 3) + "\"/>\n";
}

void Document::polyline(const std::vector<std::pair<double, double>>& points,
                        const std::string& stroke, double width) {
  if (points.empty()) return;
  body_ += "<polyline fill=\"none\" stroke=\"" + stroke + "\" stroke-width=\"" + num(width, 3) +
           "\" points=\"";
  for (size_t i = 0; i < points.size(); ++i)
    body_.append(i ? " " : "").append(num(points[i].first, 6)).append(",").append(
        num(points[i].second, 6));
  body_ += "\"/>\n";
}

void Document::circle(double cx, double cy, double r, const std::string& fill,
                      const std::string& title) {
  body_ += "<circle cx=\"" + num(cx, 6) + "\" cy=\"" + num(cy, 6) + "\" r=\"" + num(r, 4) +
           "\" fill=\"" + fill + "\"";
  if (title.empty()) {
    body_ += "/>\n";
  } else {
    body_ += "><title>" + escape(title) + "</title></circle>\n";
  }
}

void Document::text(double x, double y, std::string_view s, double size, const std::string& anchor,
                    double rotate) {
  body_ += "<text x=\"" + num(x, 6) + "\" y=\"" + num(y, 6) + "\" font-size=\"" + num(size, 3) +
           "\" text-anchor=\"" + anchor + "\"";
  if (rotate != 0)
    body_.append(" transform=\"rotate(")
        .append(num(rotate, 4))
        .append(" ")
        .append(num(x, 6))
        .append(" ")
        .append(num(y, 6))
        .append(")\"");
  body_.append(">").append(escape(s)).append("</text>\n");
}

std::string Document::str() const {
  return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(width_, 6) + "\" height=\"" +
         num(height_, 6) + "\" viewBox=\"0 0 " + num(width_, 6) + " " + num(height_, 6) +
         "\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n" +
         body_ + "</svg>\n";
}

std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

namespace {

using Rgb = std::array<double, 3>;

std::string hex(const Rgb& c) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "#%02x%02x%02x", int(std::lround(c[0])), int(std::lround(c[1])),
                int(std::lround(c[2])));
  return buf;
}

// Piecewise-linear interpolation through `stops` for t in [0, 1].
template <size_t N>
std::string ramp(const std::array<Rgb, N>& stops, double t) {
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0) * double(N - 1);
  const size_t i = std::min(size_t(t), N - 2);
  const double f = t - double(i);
  Rgb c;
  for (int k = 0; k < 3; ++k) c[k] = stops[i][k] * (1 - f) + stops[i + 1][k] * f;
  return hex(c);
}

}  // namespace

std::string sequential(double v) {
  static const std::array<Rgb, 5> stops = {
      {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}}};
  return ramp(stops, v);
}

std::string diverging(double v) {
  static const std::array<Rgb, 3> stops = {{{49, 54, 149}, {247, 247, 247}, {165, 0, 38}}};
  return ramp(stops, (v + 1) / 2);
}

std::string num(double v, int digits) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
  return buf;
}

}  // namespace finmoe::svg
