"""Where Kaon keeps bytes that are not rows: artifact blobs (`blobstore`)."""
