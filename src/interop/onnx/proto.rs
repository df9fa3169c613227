//! Small constructors for tract-onnx's prost-generated ONNX protobuf types, and the reverse:
//! reading attributes and float tensors out of them.
//!
//! Proto3 encoding drops fields at their default value, and `onnx.checker` rejects an attribute
//! without its value field: so an attribute equal to 0 must be left out (ONNX's defaults for the
//! attributes we write are the zeros anyway).

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{Dimension, dimension};

pub fn attr_int(name: &str, value: i64) -> pb::AttributeProto {
    debug_assert!(value != 0, "attribute {name}: a zero would not be encoded");
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

pub fn attr_float(name: &str, value: f32) -> pb::AttributeProto {
    debug_assert!(
        value != 0.0,
        "attribute {name}: a zero would not be encoded"
    );
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Float as i32,
        f: value,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, values: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn attr_tensor(name: &str, value: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Tensor as i32,
        t: Some(value),
        ..Default::default()
    }
}

/// A float32 tensor stored as little-endian raw bytes (how exporters write large weights).
pub fn float_tensor(name: &str, dims: &[usize], values: &[f32]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor (a Reshape's shape, a Gather's index; `dims` empty for a scalar).
pub fn int64_tensor(name: &str, dims: &[usize], values: &[i64]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), values.len(), "{name}");
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Int64 as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// One dimension of a value's shape: fixed, or a named symbol (dynamic batch).
#[derive(Debug, Clone, Copy)]
pub enum Dim {
    Fixed(usize),
    Symbol(&'static str),
}

pub fn float_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    value_info(name, dims, DataType::Float as i32)
}

/// A value's name, element type (ONNX's `DataType` number) and shape.
pub fn value_info(name: &str, dims: &[Dim], elem_type: i32) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Symbol(s) => dimension::Value::DimParam((*s).into()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

pub fn node(
    op_type: &str,
    name: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: name.into(),
        op_type: op_type.into(),
        attribute,
        ..Default::default()
    }
}

/// The attribute `name` of `node`, if present.
pub fn attribute<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The values of a float tensor (raw little-endian bytes or `float_data`), checked against its
/// dims; the error names the tensor.
pub fn float_values(tensor: &pb::TensorProto) -> anyhow::Result<Vec<f32>> {
    let name = &tensor.name;
    if tensor.data_type != DataType::Float as i32 {
        anyhow::bail!(
            "tensor `{name}` has data type {}, expected float32 (1)",
            tensor.data_type
        );
    }
    if tensor.data_location == Some(1) || !tensor.external_data.is_empty() {
        anyhow::bail!("tensor `{name}` is stored in an external file, which is not supported");
    }
    if tensor.dims.iter().any(|&d| d < 0) {
        anyhow::bail!("tensor `{name}` has negative dims {:?}", tensor.dims);
    }
    let expected: usize = tensor.dims.iter().map(|&d| d as usize).product();
    let values: Vec<f32> = if !tensor.raw_data.is_empty() {
        if !tensor.raw_data.len().is_multiple_of(4) {
            anyhow::bail!(
                "tensor `{name}`: {} raw bytes is not a whole number of float32",
                tensor.raw_data.len()
            );
        }
        tensor
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        tensor.float_data.clone()
    };
    if values.len() != expected {
        anyhow::bail!(
            "tensor `{name}` has {} values, its dims {:?} need {expected}",
            values.len(),
            tensor.dims
        );
    }
    Ok(values)
}
