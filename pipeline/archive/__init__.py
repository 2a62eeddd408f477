"""Archive replay: every recording of folders of exams segmented once per reference, on Ray workers, resumably."""
