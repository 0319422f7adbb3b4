// JPEG decoding with libjpeg-turbo's TurboJPEG API, using the same decoder settings Pillow
// uses (ISLOW DCT, fancy upsampling), so pixels match `Image.open(...).convert('RGB')` on a
// Pillow built against libjpeg-turbo.
#include <turbojpeg.h>

#include <memory>
#include <string>

#include "decoders.h"

namespace xcpipe::image::internal {
namespace {

struct TurboJpegDestroyer {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TurboJpegHandle = std::unique_ptr<void, TurboJpegDestroyer>;

StatusOr<TurboJpegHandle> NewDecompressor() {
  TurboJpegHandle handle(tjInitDecompress());
  if (!handle) return InternalError(std::string("tjInitDecompress failed: ") + tjGetErrorStr2(nullptr));
  return handle;
}

const unsigned char* Data(std::string_view bytes) { return reinterpret_cast<const unsigned char*>(bytes.data()); }

}  // namespace

StatusOr<ImageHeader> ReadJpegHeader(std::string_view bytes) {
  XCPIPE_ASSIGN_OR_RETURN(TurboJpegHandle handle, NewDecompressor());
  int width = 0;
  int height = 0;
  int subsampling = 0;
  int colorspace = 0;
  if (tjDecompressHeader3(handle.get(), Data(bytes), static_cast<unsigned long>(bytes.size()), &width, &height,
                          &subsampling, &colorspace) != 0) {
    return InvalidArgumentError(std::string("corrupt or truncated JPEG header: ") + tjGetErrorStr2(handle.get()) +
                                "; expected JPEG markers up to a frame header (SOFn)");
  }
  if (width <= 0 || height <= 0) {
    // libjpeg meets the end of a file cut inside its headers with a warning and a fake EOI, and
    // TurboJPEG then reports success with no frame.
    return InvalidArgumentError("JPEG is truncated or incomplete: the data ends before a frame header (SOFn) "
                                "gives the image size");
  }
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    return InvalidArgumentError("CMYK/YCCK JPEG images are not supported; expected a greyscale or colour (YCbCr/RGB) "
                                "JPEG (convert the image to RGB first)");
  }
  return ImageHeader{ImageFormat::kJpeg, width, height};
}

StatusOr<RgbImage> DecodeJpeg(std::string_view bytes, const ImageHeader& header) {
  XCPIPE_ASSIGN_OR_RETURN(TurboJpegHandle handle, NewDecompressor());
  RgbImage image;
  image.width = header.width;
  image.height = header.height;
  image.pixels.resize(static_cast<size_t>(header.width * header.height * 3));
  // LIMITSCANS refuses progressive files with more than 500 scans, a known way to make a small
  // file take minutes to decode.
  const int rc = tjDecompress2(handle.get(), Data(bytes), static_cast<unsigned long>(bytes.size()),
                               image.pixels.data(), static_cast<int>(header.width), /*pitch=*/0,
                               static_cast<int>(header.height), TJPF_RGB, TJFLAG_LIMITSCANS);
  if (rc != 0) {
    const std::string message = tjGetErrorStr2(handle.get());
    if (tjGetErrorCode(handle.get()) != TJERR_WARNING) return InvalidArgumentError("corrupt JPEG: " + message + "; expected a well-formed baseline or progressive JPEG");
    // libjpeg pads a file that ends early with grey and only warns; PIL refuses such files
    // ("image file is truncated"), and so do we. Other warnings (extraneous bytes before a
    // marker and the like) leave a complete image that PIL accepts.
    if (message.find("Premature end") != std::string::npos || message.find("premature end") != std::string::npos) {
      return InvalidArgumentError("JPEG is truncated: " + message + "; expected the whole file, up to its EOI marker");
    }
  }
  return image;
}

}  // namespace xcpipe::image::internal
