"""What ptm writes: records in every format, image files, and the results page."""
