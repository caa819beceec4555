"""The HTTP front end: the Open Inference Protocol over REST, and the page at `/`."""
