#include "xcpipe/image/image_types.h"

namespace xcpipe::image {

RgbImage RgbImage::Filled(int64_t width, int64_t height, uint8_t r, uint8_t g, uint8_t b) {
  RgbImage image;
  image.width = width;
  image.height = height;
  image.pixels.resize(static_cast<size_t>(width * height * 3));
  for (size_t i = 0; i < image.pixels.size(); i += 3) {
    image.pixels[i] = r;
    image.pixels[i + 1] = g;
    image.pixels[i + 2] = b;
  }
  return image;
}

}  // namespace xcpipe::image
