"""The console's pages, one router each: ``login`` (sign-in, sign-out), ``inbox`` (approval
requests, approving and rejecting), ``decisions`` (the decision explorer), ``policy``."""
