package ctlink

// MapErr is mapErr, for the external tests.
var MapErr = mapErr
