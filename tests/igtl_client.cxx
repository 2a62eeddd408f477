// A minimal OpenIGTLink client built on the C library (Debian's libopenigtlink-dev, 1.11, protocol 2), as older
// PLUS builds and Slicer 4 read messages: tests/test_igtl.py compiles it at test time and runs it against
// `run --igtl`. It receives COUNT IMAGE messages and, per message, prints one line
//   IMAGE <device> <columns> <rows> <slices> <scalar type> <spacing i> <spacing j>
// and writes the pixels to OUT_DIR/<n>-<device>.raw; any other message is printed as "OTHER <type> <device>"
// (a message the library cannot read prints "OTHER  " with an empty type) and skipped.
// usage: igtl_client HOST PORT COUNT OUT_DIR

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "igtlClientSocket.h"
#include "igtlImageMessage.h"
#include "igtlMessageHeader.h"

int main(int argc, char* argv[]) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s HOST PORT COUNT OUT_DIR\n", argv[0]);
    return 2;
  }
  const int count = std::atoi(argv[3]);
  const std::string out_dir = argv[4];
  igtl::ClientSocket::Pointer socket = igtl::ClientSocket::New();
  if (socket->ConnectToServer(argv[1], std::atoi(argv[2])) != 0) {
    std::fprintf(stderr, "cannot connect to %s:%s\n", argv[1], argv[2]);
    return 1;
  }
  socket->SetReceiveTimeout(30000);  // ms: a server that sends nothing ends the client, never hangs it
  std::printf("CONNECTED\n");
  std::fflush(stdout);
  igtl::MessageHeader::Pointer header = igtl::MessageHeader::New();
  int images = 0, messages = 0;
  while (images < count && messages < 100 * count) {
    header->InitPack();
    if (socket->Receive(header->GetPackPointer(), header->GetPackSize()) != header->GetPackSize()) {
      std::fprintf(stderr, "connection closed or timed out after %d images\n", images);
      return 1;
    }
    header->Unpack();
    ++messages;
    if (std::strcmp(header->GetDeviceType(), "IMAGE") != 0) {
      std::printf("OTHER %s %s\n", header->GetDeviceType(), header->GetDeviceName());
      socket->Skip(header->GetBodySizeToRead(), 0);
      continue;
    }
    igtl::ImageMessage::Pointer image = igtl::ImageMessage::New();
    image->SetMessageHeader(header);
    image->AllocatePack();
    socket->Receive(image->GetPackBodyPointer(), image->GetPackBodySize());
    if (!(image->Unpack(1) & igtl::MessageHeader::UNPACK_BODY)) {
      std::printf("BADBODY %s\n", image->GetDeviceName());
      continue;
    }
    int size[3];
    float spacing[3];
    image->GetDimensions(size);
    image->GetSpacing(spacing);
    std::printf("IMAGE %s %d %d %d %d %g %g\n", image->GetDeviceName(), size[0], size[1], size[2], image->GetScalarType(),
                spacing[0], spacing[1]);
    const std::string path = out_dir + "/" + std::to_string(images) + "-" + image->GetDeviceName() + ".raw";
    if (FILE* f = std::fopen(path.c_str(), "wb")) {
      std::fwrite(image->GetScalarPointer(), 1, image->GetImageSize(), f);
      std::fclose(f);
    }
    std::fflush(stdout);
    ++images;
  }
  socket->CloseSocket();
  return images == count ? 0 : 1;
}
