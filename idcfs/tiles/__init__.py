"""Stored DICOM frames to served JPEG files: see `idcfs.tiles.convert`.

Kept empty of imports so that `idcfs.dicom.pixels` loads without the codecs.
"""
