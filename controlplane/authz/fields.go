package authz

import (
	"fmt"
	"log/slog"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The audit line shows a request's fields whatever the method, so that a
// new audited call needs no code to say what it did. Requests of the
// operators' calls are small; these bounds keep a hostile one from
// flooding the log.
const (
	maxFieldDepth = 3
	maxString     = 256
	maxList       = 16
)

// fieldAttrs are the fields of m, by their proto names: every scalar
// (a proto3 false or "" says something too: "draining: false" is an
// undrain), the messages, lists and maps that are set, and of a oneof only
// its member that is set. Nested messages become groups.
func fieldAttrs(m protoreflect.Message, depth int) []slog.Attr {
	var attrs []slog.Attr
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		isMsg := fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind
		if (fd.ContainingOneof() != nil || isMsg || fd.IsList() || fd.IsMap()) && !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		key := string(fd.Name())
		switch {
		case fd.IsList():
			l := v.List()
			if isMsg {
				attrs = append(attrs, slog.Int(key+"_count", l.Len()))
				break
			}
			items := make([]string, 0, min(l.Len(), maxList))
			for j := 0; j < l.Len() && j < maxList; j++ {
				items = append(items, scalar(fd, l.Get(j)))
			}
			if l.Len() > maxList {
				items = append(items, fmt.Sprintf("... %d more", l.Len()-maxList))
			}
			attrs = append(attrs, slog.Any(key, items))
		case fd.IsMap():
			attrs = append(attrs, slog.Int(key+"_count", v.Map().Len()))
		case isMsg:
			if depth >= maxFieldDepth {
				attrs = append(attrs, slog.String(key, "..."))
				break
			}
			attrs = append(attrs, slog.Attr{Key: key, Value: slog.GroupValue(fieldAttrs(v.Message(), depth+1)...)})
		case fd.Kind() == protoreflect.BoolKind:
			attrs = append(attrs, slog.Bool(key, v.Bool()))
		default:
			attrs = append(attrs, slog.String(key, scalar(fd, v)))
		}
	}
	return attrs
}

// scalar formats one non-message value.
func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) string {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return clip(v.String())
	case protoreflect.BytesKind:
		return fmt.Sprintf("(%d bytes)", len(v.Bytes()))
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return fmt.Sprint(int32(v.Enum()))
	}
	return fmt.Sprint(v.Interface())
}

func clip(s string) string {
	if len(s) <= maxString {
		return s
	}
	return s[:maxString] + "..."
}
