package proxy

import (
	"reflect"
	"strings"
)

// yamlKeys returns the yaml keys of the struct v points to.
func yamlKeys(v any) map[string]bool {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	m := map[string]bool{}
	for i := range t.NumField() {
		tag := t.Field(i).Tag.Get("yaml")
		if name, _, _ := strings.Cut(tag, ","); name != "" && name != "-" {
			m[name] = true
		}
	}
	return m
}
