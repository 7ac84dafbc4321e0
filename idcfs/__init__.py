"""idcfs: DICOM whole-slide images from DICOMweb servers as a read-only FUSE filesystem."""

__version__ = "0.1.0"
