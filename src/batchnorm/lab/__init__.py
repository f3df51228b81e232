"""The lab: experiments that test the common claims about batch normalization, and their report."""
